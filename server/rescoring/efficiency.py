"""LoRA versus full fine-tuning of the same encoder: trainable fraction, step time and peak memory.

Each mode runs a few MWER steps on the same lists in a fresh process (``spawn``), so neither
inherits the other's allocations. Memory: the peak resident set size during the steps (``VmHWM``,
reset just before them) and its growth over the RSS before the first step, i.e. what training adds
on top of the loaded model: gradients, optimizer state, activations kept for backward (Linux only).
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from .data import NBestList

MODES = ("lora", "full")


def status_mib(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` (peak) of this process from /proc, in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (``ru_maxrss`` cannot be reset, and a spawned child inherits it)."""
    Path("/proc/self/clear_refs").write_text("5")


def _run(mode: str, encoder_name: str, lists: list[dict], steps: int, threads: int, config: dict) -> dict:
    torch.set_num_threads(threads)
    from .data import NBestList, rescorer_text
    from .encoder import load_encoder
    from .train import RescorerTrainConfig, batch_loss, build_model, trainable_parameters

    cfg = RescorerTrainConfig(**config)
    encoder = load_encoder(encoder_name)
    model, _ = build_model(encoder, cfg)
    if mode == "lora":
        params, slot = trainable_parameters(model), 1
    else:  # every encoder weight and the head of slot 0 (no LoRA)
        for p in model.parameters():
            p.requires_grad_(False)
        base = [p for n, p in encoder.model.named_parameters() if "lora_" not in n and "gate_" not in n]
        params, slot = base + [model.head_weight, model.head_bias], 0
        for p in params:
            p.requires_grad_(True)
    total = sum(p.numel() for n, p in encoder.model.named_parameters() if "lora_" not in n and "gate_" not in n)
    trained = (sum(cfg.rank * sum(encoder.spec.linear_shapes[m]) for m in model.targets) if mode == "lora"
               else total) + encoder.hidden_size + 1
    optimizer = torch.optim.AdamW(params, lr=cfg.lr)
    data = [NBestList(**x) for x in lists]
    # warm-up forward (first-call allocations), then measure the training steps' peak above this point
    with torch.no_grad():
        model([rescorer_text(h) for h in data[0].hyps], [slot] * len(data[0].hyps))
    _reset_peak()
    before = status_mib("VmRSS")
    times = []
    for i in range(steps):
        batch = [data[(i * cfg.lists_per_step + j) % len(data)] for j in range(cfg.lists_per_step)]
        start = time.perf_counter()
        loss, _, _ = batch_loss(model, batch, slot, cfg.correlation_weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return {"mode": mode, "trainable_parameters": trained, "encoder_parameters": total,
            "trainable_fraction": round(trained / total, 6), "steps": steps,
            "seconds_per_step": round(sorted(times[1:] or times)[len(times[1:] or times) // 2], 4),
            "rss_before_steps_mib": round(before, 1), "peak_rss_mib": round(status_mib("VmHWM"), 1),
            "peak_growth_mib": round(status_mib("VmHWM") - before, 1)}


def compare(encoder_name: str, lists: Sequence[NBestList], config, steps: int = 5, threads: int | None = None) -> dict:
    """Run ``steps`` training steps with LoRA and with full fine-tuning; one process each, in turn."""
    threads = threads or torch.get_num_threads()
    cfg = {k: v for k, v in config.__dict__.items() if k != "quiet"} | {"quiet": True}
    ctx = multiprocessing.get_context("spawn")
    rows = {}
    with ctx.Pool(1, maxtasksperchild=1) as pool:
        for mode in MODES:
            rows[mode] = pool.apply(_run, (mode, encoder_name, [asdict(x) for x in lists], steps, threads, cfg))
    lora, full = rows["lora"], rows["full"]
    return {**rows, "speedup": round(full["seconds_per_step"] / max(lora["seconds_per_step"], 1e-9), 2),
            "memory_saving": round(1 - lora["peak_growth_mib"] / max(full["peak_growth_mib"], 1e-9), 3)}
