"""Real-time factor of SplitASR versus faster-whisper (CTranslate2) on the same audio and weights.

Greedy decoding, batch 1, timestamps and Whisper's temperature fallback on for both (the default
output of each), on the CPU with the same thread count. RTF = wall seconds / audio seconds (lower is
faster); ``ratio`` = ours / theirs. The WER of each on the fixtures' references (Whisper's English
normaliser) shows that both decode the same thing.

On CUDA (``device="cuda"``) the kinds are float16 (with CUDA graphs, and without them: how much the
graphs save) and int8 weights, against CTranslate2's ``float16`` and ``int8_float16``.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ..audio import SAMPLE_RATE_HZ, decode_audio
from ..backbones.sources import KNOWN_BACKBONES, package_dir
from ..backbones.whisper import WhisperBackbone, pick_device
from ..progress import track
from .common import cpu_flags, cpu_model

DEFAULT_AUDIO_DIR = Path(__file__).resolve().parents[2] / "tests" / "data" / "real-speech"


def _load_audio(audio_dir: Path) -> tuple[list[np.ndarray], list[str] | None]:
    """The audio of ``audio_dir`` and, when it has a ``manifest.jsonl``, the references."""
    manifest = audio_dir / "manifest.jsonl"
    if manifest.is_file():
        rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
        return [decode_audio(audio_dir / r["audio_filepath"]) for r in rows], [r["text"] for r in rows]
    files = sorted(p for p in audio_dir.rglob("*") if p.suffix in (".flac", ".wav", ".mp3", ".ogg"))
    if not files:
        raise FileNotFoundError(f"no audio files under {audio_dir}")
    return [decode_audio(p) for p in files], None


def _time_runs(fn, audios: list[np.ndarray], repeats: int, desc: str = "bench rtf",
               quiet: bool = True) -> tuple[float, list[str]]:
    """Best-of-``repeats`` wall time over the whole set (the least disturbed run on a shared machine)
    and the transcripts."""
    fn(audios[0])  # warm-up
    times, texts = [], []
    for _ in track(range(repeats), desc, unit="run", quiet=quiet):
        start = time.perf_counter()
        texts = [fn(a) for a in audios]
        times.append(time.perf_counter() - start)
    return min(times), texts


def _wer(refs: list[str] | None, hyps: list[str]) -> float | None:
    if refs is None:
        return None
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    from ..scoring import wer

    norm = EnglishTextNormalizer({})
    return wer([norm(r) for r in refs], [norm(h) for h in hyps])


def _decode_one(backbone, cuda_graphs: bool):
    """Transcribe one clip at a time on a decoder of its own (so CUDA graphs can be switched)."""
    from ..decoding.types import DecodingOptions
    from ..decoding.whisper.decoder import WhisperDecoder

    decoder = WhisperDecoder(backbone, cuda_graphs=cuda_graphs)

    def one(audio: np.ndarray) -> str:
        request = decoder.start(audio, DecodingOptions())
        decoder.run([request])
        return request.result.text
    return one


# (result key, quantize, dtype, CUDA graphs) of our runs; CTranslate2's compute types to compare with
OURS = {"cpu": (("fp32", "none", None, False), ("int8", "int8", None, False), ("bf16", "none", torch.bfloat16, False)),
        "cuda": (("fp16", "none", torch.float16, True), ("fp16_eager", "none", torch.float16, False),
                 ("int8", "int8", None, True))}
THEIRS = {"cpu": (("fp32", "float32"), ("int8", "int8")), "cuda": (("fp16", "float16"), ("int8", "int8_float16"))}


def run(*, backbone: str = "tiny.en", audio_dir: Path = DEFAULT_AUDIO_DIR, repeats: int = 3,
        threads: int | None = None, cache_dir: Path, quiet: bool = True, device: str = "cpu") -> dict:
    from faster_whisper import WhisperModel

    if device not in OURS:
        raise ValueError(f"device must be 'cpu' or 'cuda', not {device!r}")
    pick_device(device)  # BackboneUnavailable before anything loads when CUDA is missing
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    audios, refs = _load_audio(audio_dir)
    audio_seconds = sum(len(a) for a in audios) / SAMPLE_RATE_HZ
    known = KNOWN_BACKBONES[backbone]
    module, folder = known.config_dir
    ct2_dir = package_dir(module, known.pip_requirement) / folder
    if len(known.weights) > 1:
        raise ValueError("faster-whisper needs a single model.bin; use tiny.en")
    result: dict = {"backbone": backbone, "audio_seconds": round(audio_seconds, 2), "utterances": len(audios),
                    "threads": threads, "repeats": repeats, "device": device}

    # cpu bf16: what SPLITASR_DTYPE=bfloat16 serves (fast where the CPU has AMX / AVX-512 BF16)
    for key, quantize, dtype, graphs in OURS[device]:
        ours = WhisperBackbone.load(backbone, cache_dir=cache_dir, device=device, quantize=quantize, dtype=dtype)
        seconds, texts = _time_runs(_decode_one(ours, graphs), audios, repeats, f"splitasr {key}", quiet)
        result[f"splitasr_{key}_rtf"] = seconds / audio_seconds
        result[f"splitasr_{key}_wer"] = _wer(refs, texts)
        del ours
    for key, compute_type in THEIRS[device]:
        fw = WhisperModel(str(ct2_dir), device=device, compute_type=compute_type, cpu_threads=threads)

        def run_fw(a: np.ndarray, fw: WhisperModel = fw) -> str:
            segments, _ = fw.transcribe(a, beam_size=1, language="en", vad_filter=False)
            return " ".join(s.text.strip() for s in segments)

        seconds, texts = _time_runs(run_fw, audios, repeats, f"faster-whisper {key}", quiet)
        result[f"faster_whisper_{key}_rtf"] = seconds / audio_seconds
        result[f"faster_whisper_{key}_wer"] = _wer(refs, texts)
    for key, _ in THEIRS[device]:
        result[f"ratio_{key}"] = result[f"splitasr_{key}_rtf"] / result[f"faster_whisper_{key}_rtf"]
    if device == "cpu":  # CTranslate2 has no bfloat16 on the CPU: compare with both of its kinds
        result["ratio_bf16_to_fp32"] = result["splitasr_bf16_rtf"] / result["faster_whisper_fp32_rtf"]
        result["ratio_bf16_to_int8"] = result["splitasr_bf16_rtf"] / result["faster_whisper_int8_rtf"]
        result["cpu_flags"] = [f for f in ("amx_bf16", "avx512_bf16") if f in cpu_flags()]
    else:
        result["cuda_graph_speedup"] = result["splitasr_fp16_eager_rtf"] / result["splitasr_fp16_rtf"]
        result["gpu"] = torch.cuda.get_device_name()

    result["cpu"] = cpu_model()
    for k, v in result.items():
        if isinstance(v, float):
            result[k] = round(v, 4)
    result["median_utterance_seconds"] = round(statistics.median(len(a) / SAMPLE_RATE_HZ for a in audios), 2)
    return result

