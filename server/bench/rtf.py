"""Real-time factor of SplitASR versus faster-whisper (CTranslate2) on the same audio and weights.

Greedy decoding, batch 1, timestamps on for both (the default output of each), on the CPU with the
same thread count. RTF = wall seconds / audio seconds (lower is faster); ``ratio`` = ours / theirs.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ..audio import SAMPLE_RATE_HZ, decode_audio
from ..backbones.sources import KNOWN_BACKBONES, package_dir
from ..backbones.whisper import WhisperBackbone
from ..decoding import transcribe

DEFAULT_AUDIO_DIR = Path(__file__).resolve().parents[2] / "tests" / "data" / "real-speech"


def _load_audio(audio_dir: Path) -> list[np.ndarray]:
    files = sorted(p for p in audio_dir.rglob("*") if p.suffix in (".flac", ".wav", ".mp3", ".ogg"))
    if not files:
        raise FileNotFoundError(f"no audio files under {audio_dir}")
    return [decode_audio(p) for p in files]


def _time_runs(fn, audios: list[np.ndarray], repeats: int) -> float:
    """Best-of-``repeats`` wall time over the whole set (the least disturbed run on a shared machine)."""
    fn(audios[0])  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for a in audios:
            fn(a)
        times.append(time.perf_counter() - start)
    return min(times)


def run(*, backbone: str = "tiny.en", audio_dir: Path = DEFAULT_AUDIO_DIR, repeats: int = 3,
        threads: int | None = None, cache_dir: Path) -> dict:
    from faster_whisper import WhisperModel

    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    audios = _load_audio(audio_dir)
    audio_seconds = sum(len(a) for a in audios) / SAMPLE_RATE_HZ
    known = KNOWN_BACKBONES[backbone]
    module, folder = known.config_dir
    ct2_dir = package_dir(module, known.pip_requirement) / folder
    if len(known.weights) > 1:
        raise ValueError("faster-whisper needs a single model.bin; use tiny.en")
    result: dict = {"backbone": backbone, "audio_seconds": round(audio_seconds, 2), "utterances": len(audios),
                    "threads": threads, "repeats": repeats, "device": "cpu"}

    ours = WhisperBackbone.load(backbone, cache_dir=cache_dir, device="cpu")
    result["splitasr_fp32_rtf"] = _time_runs(lambda a: transcribe(ours, [a]), audios, repeats) / audio_seconds
    ours.model = torch.ao.quantization.quantize_dynamic(ours.model, {torch.nn.Linear}, dtype=torch.qint8)
    result["splitasr_int8_rtf"] = _time_runs(lambda a: transcribe(ours, [a]), audios, repeats) / audio_seconds

    for compute_type in ("float32", "int8"):
        fw = WhisperModel(str(ct2_dir), device="cpu", compute_type=compute_type, cpu_threads=threads)

        def run_fw(a: np.ndarray, fw: WhisperModel = fw) -> None:
            segments, _ = fw.transcribe(a, beam_size=1, language="en", vad_filter=False)
            list(segments)

        key = "fp32" if compute_type == "float32" else "int8"
        result[f"faster_whisper_{key}_rtf"] = _time_runs(run_fw, audios, repeats) / audio_seconds
    for key in ("fp32", "int8"):
        result[f"ratio_{key}"] = result[f"splitasr_{key}_rtf"] / result[f"faster_whisper_{key}_rtf"]
    for k, v in result.items():
        if isinstance(v, float):
            result[k] = round(v, 4)
    result["median_utterance_seconds"] = round(statistics.median(len(a) / SAMPLE_RATE_HZ for a in audios), 2)
    return result
