"""LoRA versus full fine-tuning of the same encoder: trainable fraction, step time and peak memory.

Each mode runs a few MWER steps on the same lists in a fresh process (``spawn``), so neither
inherits the other's allocations: peak memory is the process's peak resident set size (``ru_maxrss``)
and its growth over the training steps (gradients, optimizer state, activations kept for backward).
"""

from __future__ import annotations

import multiprocessing
import resource
import time
from collections.abc import Sequence
from dataclasses import asdict

import torch

from .data import NBestList

MODES = ("lora", "full")


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _run(mode: str, encoder_name: str, lists: list[dict], steps: int, threads: int, config: dict) -> dict:
    torch.set_num_threads(threads)
    from .data import NBestList
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
    before = _rss_mib()
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
            "peak_rss_mib": round(_rss_mib(), 1), "rss_growth_mib": round(_rss_mib() - before, 1)}


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
            "memory_saving": round(1 - lora["rss_growth_mib"] / max(full["rss_growth_mib"], 1e-9), 3)}
