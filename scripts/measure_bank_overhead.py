"""The adapter bank's extra cost, in one process: tiny.en with a bank on every linear ("all") and 16
random rank-8 GLoRA adapters (the ``bench multitenant`` ones), timing the encoder over 16 rows of 30 s
and 40 decoder-side steps (fc1/fc2/q/k of every decoder layer, 16 rows), without adapters (every row on
slot 0) and with one distinct adapter per row. With ``--against COMMIT`` the bank forward of that
commit (``server/adapters/bank.py``) runs too, alternating with the current one, so both see the same
machine load. Best of ``--rounds``; prints one JSON object (docs/results.md).

    python scripts/measure_bank_overhead.py --against 490ef4c --threads 2
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from splitasr.adapters import AdapterLimits, BackboneSpec, attach_bank, load_adapter, load_into_slot
from splitasr.adapters import bank as bank_module
from splitasr.adapters.context import rows_context
from splitasr.backbones.whisper import WhisperBackbone
from splitasr.bench.common import cpu_model
from splitasr.bench.multitenant import random_adapter_bytes
from splitasr.config import Settings
from splitasr.decoding.whisper.model import WhisperRunner

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("forward", "_gather", "_delta", "_add_delta")


def _methods(cls: type) -> dict:
    return {k: v for k, v in cls.__dict__.items() if k in METHODS}


def _bank_of(commit: str, tmp: Path):
    source = subprocess.run(["git", "show", f"{commit}:server/adapters/bank.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = tmp / "bank_then.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("splitasr.adapters.bank_then", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.AdapterBank


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--against", help="a commit whose bank forward to time as well")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = 16
    bb = WhisperBackbone.load("tiny.en", cache_dir=Settings().backbone_cache_dir, device="cpu")
    attach_bank(bb.model, "all", n, AdapterLimits(max_rank=8, max_experts=4))
    spec = BackboneSpec.from_model(bb.name, bb.model)
    for i in range(n):
        data, _ = random_adapter_bytes(spec, "glora", 8, "all", seed=i)
        load_into_slot(bb.model, i + 1, load_adapter(data, expected_backbone=spec))
    runner = WhisperRunner(bb.model, n)
    feats = torch.randn(n, 80, 3000, generator=torch.Generator().manual_seed(0))
    steps_in = torch.randn(n, 1, bb.model.config.d_model, generator=torch.Generator().manual_seed(1))

    def encoder(slots: list[int]) -> None:
        with torch.no_grad(), rows_context(bb.model, slots):
            runner.encode(feats)

    def decoder(slots: list[int]) -> None:
        with torch.no_grad(), rows_context(bb.model, slots):
            x = steps_in
            for _ in range(40):
                for layer in runner.layers:
                    x = layer.fc2(F.gelu(layer.fc1(layer.self_attn.q_proj(x) + layer.encoder_attn.k_proj(x))))

    current = _methods(bank_module.AdapterBank)
    with tempfile.TemporaryDirectory() as tmp:
        versions = {"current": current}
        if args.against:
            versions = {args.against: _methods(_bank_of(args.against, Path(tmp))), **versions}
        times: dict[str, dict[str, list[float]]] = {v: {} for v in versions}
        base, distinct = [0] * n, list(range(1, n + 1))
        for _ in range(args.rounds + 1):  # the first round warms up
            for version, methods in versions.items():
                for k in METHODS:
                    if hasattr(bank_module.AdapterBank, k) and k not in methods:
                        delattr(bank_module.AdapterBank, k)
                for k, v in methods.items():
                    setattr(bank_module.AdapterBank, k, v)
                for name, fn, slots in (("encoder_base", encoder, base), ("encoder_adapters", encoder, distinct),
                                        ("decoder_base", decoder, base), ("decoder_adapters", decoder, distinct)):
                    start = time.perf_counter()
                    fn(slots)
                    times[version].setdefault(name, []).append(time.perf_counter() - start)
        for k, v in current.items():
            setattr(bank_module.AdapterBank, k, v)
    result: dict = {"threads": args.threads, "rows": n, "rounds": args.rounds, "cpu": cpu_model()}
    for version, runs in times.items():
        best = {k: round(min(v[1:]), 4) for k, v in runs.items()}
        best["encoder_overhead"] = round(best["encoder_adapters"] / best["encoder_base"] - 1, 3)
        best["decoder_overhead"] = round(best["decoder_adapters"] / best["decoder_base"] - 1, 3)
        result[version] = best
    print(json.dumps(result))


if __name__ == "__main__":
    main()
