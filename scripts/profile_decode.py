"""Where a greedy decode of the real-speech fixtures spends its time, per quantization; prints JSON.

Times the decode loop's parts (encoder windows, cross-attention K/V, decoder steps) over the 11
fixtures decoded one at a time (as `splitasr bench rtf` does), then the encoder's operators for one
30 s window with torch.profiler. Use it before optimizing the CPU path.

    python scripts/profile_decode.py [--threads 1] [--quantize none,int8]
"""
import argparse
import json
import time

import torch


def parts(backbone, audios) -> dict:
    from splitasr.decoding import transcribe
    from splitasr.decoding.run import whisper_decoder

    runner = whisper_decoder(backbone)[0].runner
    seconds = {"encode": 0.0, "write_cross": 0.0, "prefill": 0.0, "step": 0.0}
    calls = dict.fromkeys(seconds, 0)

    def timed(name):
        inner = getattr(runner, name)

        def call(*args, **kwargs):
            start = time.perf_counter()
            out = inner(*args, **kwargs)
            seconds[name] += time.perf_counter() - start
            calls[name] += 1
            return out
        return call

    for name in seconds:
        setattr(runner, name, timed(name))
    transcribe(backbone, audios[:1])  # warm up
    for name in seconds:
        seconds[name], calls[name] = 0.0, 0
    start = time.perf_counter()
    for audio in audios:
        transcribe(backbone, [audio])
    total = time.perf_counter() - start
    for name in seconds:  # back to the runner's own methods
        delattr(runner, name)
    return {"total_s": round(total, 3), **{f"{k}_s": round(v, 3) for k, v in seconds.items()},
            "windows": calls["encode"], "steps": calls["step"],
            "ms_per_window": round(1000 * seconds["encode"] / max(1, calls["encode"]), 2),
            "ms_per_step": round(1000 * seconds["step"] / max(1, calls["step"]), 2)}


def encoder_ops(backbone, top: int = 6) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    from splitasr.decoding.run import whisper_decoder

    runner = whisper_decoder(backbone)[0].runner
    features = torch.randn(1, backbone.model.config.num_mel_bins, 3000)
    with torch.inference_mode():
        runner.encode(features)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                runner.encode(features)
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows)
    return [{"op": e.key, "ms_per_window": round(e.self_cpu_time_total / 3 / 1000, 2),
             "share": round(e.self_cpu_time_total / total, 3)} for e in rows[:top]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quantize", default="none,int8")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from splitasr.backbones.whisper import WhisperBackbone
    from splitasr.bench.common import cpu_model
    from splitasr.bench.rtf import DEFAULT_AUDIO_DIR, _load_audio
    from splitasr.config import Settings

    audios, _ = _load_audio(DEFAULT_AUDIO_DIR)
    out: dict = {"cpu": cpu_model(), "threads": args.threads, "utterances": len(audios)}
    for mode in args.quantize.split(","):
        backbone = WhisperBackbone.load("tiny.en", cache_dir=Settings().backbone_cache_dir, device="cpu",
                                        quantize=mode)
        out[mode] = {**parts(backbone, audios), "encoder_ops": encoder_ops(backbone)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
