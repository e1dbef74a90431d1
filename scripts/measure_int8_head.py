"""int8 tiny.en with the output head kept fp32 (tied) against the int8 head, on the 11 real-speech
fixtures, greedy, batch 1, 1 thread; the two runs alternate 3 times and each keeps its best. Prints one
JSON object (docs/results.md).

    python scripts/measure_int8_head.py
"""
from __future__ import annotations

import json
import time

import torch
from splitasr.audio import SAMPLE_RATE_HZ
from splitasr.backbones import quantize
from splitasr.backbones.whisper import WhisperBackbone
from splitasr.bench.common import cpu_model
from splitasr.bench.rtf import DEFAULT_AUDIO_DIR, _load_audio, _wer
from splitasr.config import Settings
from splitasr.decoding import transcribe


def main() -> None:
    torch.set_num_threads(1)
    audios, refs = _load_audio(DEFAULT_AUDIO_DIR)
    seconds = sum(len(a) for a in audios) / SAMPLE_RATE_HZ
    cache = Settings().backbone_cache_dir
    heads = quantize.QUANTIZED_TIED_HEADS
    quantize.QUANTIZED_TIED_HEADS = {}  # the former behaviour: the tied head stays fp32
    backbones = {"fp32_head": WhisperBackbone.load("tiny.en", cache_dir=cache, device="cpu", quantize="int8")}
    quantize.QUANTIZED_TIED_HEADS = heads
    backbones["int8_head"] = WhisperBackbone.load("tiny.en", cache_dir=cache, device="cpu", quantize="int8")
    runs: dict[str, list[float]] = {k: [] for k in backbones}
    texts: dict[str, list[str]] = {}
    for bb in backbones.values():
        transcribe(bb, [audios[0]])  # warm-up
    for _ in range(3):
        for key, bb in backbones.items():
            start = time.perf_counter()
            texts[key] = [transcribe(bb, [a])[0].text for a in audios]
            runs[key].append(round((time.perf_counter() - start) / seconds, 4))
    result = {k: {"rtf_runs": v, "best_rtf": min(v), "wer": round(_wer(refs, texts[k]), 4)} for k, v in runs.items()}
    result["speedup"] = round(result["fp32_head"]["best_rtf"] / result["int8_head"]["best_rtf"], 3)
    result["cpu"] = cpu_model()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
