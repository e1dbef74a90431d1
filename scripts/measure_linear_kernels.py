"""Time float32 linear products through F.linear (MKL) and oneDNN on this CPU; prints JSON.

The shapes are tiny.en's: a decoder step's rows through 384- and 1536-wide layers, the vocabulary
projection, and a 30 s window (1500 rows) through the encoder's layers. server/backbones/linear.py
sends products of at least MIN_ONEDNN_MACS multiply-adds to oneDNN.

    python scripts/measure_linear_kernels.py [--threads 1] [--rtf]

--rtf also decodes the real-speech fixtures with tiny.en (float32, greedy, batch 1, as
`splitasr bench rtf`) with the oneDNN layers and with plain nn.Linear, side by side in one run.
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F

from splitasr.backbones.linear import MIN_ONEDNN_MACS, _onednn_linear
from splitasr.bench.common import cpu_flags, cpu_model


def per_call_us(fn, budget_s: float = 0.3) -> float:
    fn()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget_s:
        fn()
        calls += 1
    return (time.perf_counter() - start) / calls * 1e6


def rtf_side_by_side(repeats: int = 3) -> dict:
    from pathlib import Path

    from torch import nn

    from splitasr.backbones import linear
    from splitasr.backbones.whisper import WhisperBackbone
    from splitasr.bench.rtf import DEFAULT_AUDIO_DIR, _load_audio, _time_runs, _wer
    from splitasr.config import Settings
    from splitasr.decoding import transcribe

    audios, refs = _load_audio(DEFAULT_AUDIO_DIR)
    seconds = sum(len(a) for a in audios) / 16_000
    cache = Settings(_env_file=None).backbone_cache_dir
    out = {}
    for name in ("onednn", "f_linear", "onednn_again"):  # again: the machine's drift during the run
        backbone = WhisperBackbone.load("tiny.en", cache_dir=Path(cache), device="cpu")
        if name == "f_linear":
            for module in backbone.model.modules():
                if type(module) is linear.OneDNNLinear:
                    module.__class__ = nn.Linear
        wall, texts = _time_runs(lambda a, bb=backbone: transcribe(bb, [a])[0].text, audios, repeats)
        out[f"{name}_rtf"] = round(wall / seconds, 4)
        out[f"{name}_wer"] = round(_wer(refs, texts), 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rtf", action="store_true", help="also time tiny.en on the real-speech fixtures")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    op = _onednn_linear()
    rows_out = []
    for out_f, in_f in ((384, 384), (1536, 384), (384, 1536), (51864, 384)):
        weight, bias = torch.randn(out_f, in_f), torch.randn(out_f)
        for rows in (1, 4, 16, 32, 1500):
            x = torch.randn(rows, in_f)
            mkl = per_call_us(lambda: F.linear(x, weight, bias))
            onednn = per_call_us(lambda: op(x, weight, bias, "none", [], "")) if op else None
            macs = rows * in_f * out_f
            rows_out.append({"rows": rows, "in": in_f, "out": out_f, "f_linear_us": round(mkl, 1),
                             "onednn_us": onednn and round(onednn, 1), "uses_onednn": macs >= MIN_ONEDNN_MACS,
                             "onednn_gflops": onednn and round(2 * macs / onednn / 1e3, 1),
                             "f_linear_gflops": round(2 * macs / mkl / 1e3, 1)})
    result = {"rtf": rtf_side_by_side()} if args.rtf else {}
    print(json.dumps({**result, "cpu": cpu_model(), "cpu_flags": [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in cpu_flags()], "threads": args.threads,
                      "torch": torch.__version__, "min_onednn_macs": MIN_ONEDNN_MACS, "shapes": rows_out}))


if __name__ == "__main__":
    main()
