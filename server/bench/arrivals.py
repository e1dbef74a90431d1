"""Open-loop load: Poisson arrivals of short clips mixed with long files and a clip that keeps failing
Whisper's thresholds, served by static request batching and by continuous batching in one run.

Static batching is the engine's decode worker with ``static=True``: new requests join only an empty
batch, which then runs until its last request is done (what the engine did before it owned its decode
loop). Continuous batching admits new requests at every decoder step. Both see the same arrival
schedule (same seed), one after the other, per arrival rate. The engine runs in this process; the
clients are asyncio tasks, so what is measured is the scheduling, not HTTP.

Reported per rate and mode: short-clip latency p50/p95, long-file latency, the hard clip's latency,
throughput (audio seconds decoded per wall second), and the ratio of short-clip p95 (continuous /
static; the goal is at most 1/3 at the same load, with throughput no lower).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..audio import SAMPLE_RATE_HZ, decode_audio
from ..config import Settings
from ..decoding import DecodingOptions

DEFAULT_AUDIO_DIR = Path(__file__).resolve().parents[2] / "tests" / "data" / "real-speech"
# A clip whose windows fail every threshold goes through all six temperatures (a repetition loop's cost).
HARD = DecodingOptions(compression_ratio_threshold=0.5)


def _workload(audio_dir: Path, long_seconds: float) -> tuple[list[np.ndarray], np.ndarray]:
    audios = [decode_audio(p) for p in sorted(audio_dir.rglob("*.flac"))]
    shorts = [a for a in audios if len(a) <= 4 * SAMPLE_RATE_HZ]
    gap = np.zeros(SAMPLE_RATE_HZ // 2, np.float32)
    parts, total = [], 0.0
    while total < long_seconds:
        for a in audios:
            parts += [a, gap]
            total += (len(a) + len(gap)) / SAMPLE_RATE_HZ
    return shorts, np.concatenate(parts)


def _schedule(rate: float, duration: float, seed: int, long_every: int, hard_every: int) -> list[tuple[float, str]]:
    rng = np.random.default_rng(seed)
    t, out, i = 0.0, [], 0
    while True:
        t += rng.exponential(1 / rate)
        if t > duration:
            return out
        kind = "long" if i % long_every == long_every - 1 else "hard" if i % hard_every == hard_every - 1 else "short"
        out.append((t, kind))
        i += 1


async def _drive(engine, schedule, shorts, long_audio, hard_audio) -> dict:
    latencies: dict[str, list[float]] = {"short": [], "long": [], "hard": []}
    audio_total = 0.0
    start = time.perf_counter()

    async def one(at: float, kind: str, index: int) -> None:
        nonlocal audio_total
        await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
        audio = {"long": long_audio, "hard": hard_audio}.get(kind, shorts[index % len(shorts)])
        options = HARD if kind == "hard" else DecodingOptions()
        sent = time.perf_counter()
        await engine.transcribe_audio(audio, options)
        latencies[kind].append(time.perf_counter() - sent)
        audio_total += len(audio) / SAMPLE_RATE_HZ

    await asyncio.gather(*(one(at, kind, i) for i, (at, kind) in enumerate(schedule)))
    wall = time.perf_counter() - start
    out = {"requests": len(schedule), "wall_s": wall, "throughput_audio_s_per_s": audio_total / wall}
    for kind, values in latencies.items():
        if values:
            out[f"{kind}_p50_s"] = float(np.percentile(values, 50))
            out[f"{kind}_p95_s"] = float(np.percentile(values, 95))
            out[f"{kind}_count"] = len(values)
    return out


def run(*, rates: tuple[float, ...] = (0.5, 1.0, 2.0), duration: float = 60.0, long_seconds: float = 90.0,
        backbone: str = "tiny.en", audio_dir: Path = DEFAULT_AUDIO_DIR, threads: int | None = None,
        seed: int = 0, cache_dir: Path) -> dict:
    from ..backbones.whisper import WhisperBackbone
    from ..engine.engine import Engine

    if threads:
        torch.set_num_threads(threads)
    shorts, long_audio = _workload(audio_dir, long_seconds)
    hard_audio = shorts[0]
    model = WhisperBackbone.load(backbone, cache_dir=cache_dir / "backbones", device="cpu")
    result: dict = {"backbone": backbone, "threads": torch.get_num_threads(), "duration_s": duration,
                    "long_file_s": round(len(long_audio) / SAMPLE_RATE_HZ, 1), "short_clips": len(shorts),
                    "rates": {}}
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(cache_dir=Path(tmp), max_queued_requests=10_000, _env_file=None)
        engine = Engine(settings, backbone=model)
        engine.load()
        worker = engine.worker
        try:
            for rate in rates:
                schedule = _schedule(rate, duration, seed, long_every=10, hard_every=7)
                row = {}
                for mode in ("static", "continuous"):
                    worker.static = mode == "static"
                    # the previous engine's static batches held up to 8 requests, all encoded at once
                    worker.max_admissions = 8 if worker.static else settings.max_admissions_per_step
                    row[mode] = asyncio.run(_drive(engine, schedule, shorts, long_audio, hard_audio))
                s, c = row["static"], row["continuous"]
                row["short_p95_ratio_continuous_over_static"] = c["short_p95_s"] / s["short_p95_s"]
                row["throughput_ratio_continuous_over_static"] = (c["throughput_audio_s_per_s"]
                                                                  / s["throughput_audio_s_per_s"])
                result["rates"][str(rate)] = row
        finally:
            worker.static = False
            engine.close(30)
    return _rounded(result)


def _rounded(value):
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return round(value, 4) if isinstance(value, float) else value

