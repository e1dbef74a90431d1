"""The VAD filter's effect: WER on the real-speech fixtures, and the time to transcribe a mostly silent hour.

Both with the filter off and on, in one run, on the same backbone and threads (compare the ratios):

- ``real_speech``: greedy WER (Whisper's English normalizer) of every fixture utterance as it is
  (short clips, little silence: the filter should change nothing much), and of the same utterances
  each padded with ``pad_seconds`` of silence on both sides (where Whisper may invent words).
- ``silent_hour``: one file of ``hours`` hours, the fixtures spread evenly through it, silence (low
  white noise at ``noise_dbfs``) between: wall time to transcribe it, WER against the joined
  references, and how many words came out. The filter's own time (Silero over the whole file) is
  reported apart, next to faster-whisper's ``get_speech_timestamps`` on the same audio when installed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from ..audio import SAMPLE_RATE_HZ, decode_audio
from ..audio.vad import silero_probabilities
from ..audio.vad_filter import VadFilterOptions, remove_silence
from ..backbones.whisper import WhisperBackbone
from ..decoding import Transcription, transcribe
from ..progress import bar
from ..scoring import wer

REAL_SPEECH_DIR = Path(__file__).resolve().parents[2] / "tests" / "data" / "real-speech"


def _references() -> tuple[list[np.ndarray], list[str]]:
    rows = [json.loads(line) for line in (REAL_SPEECH_DIR / "manifest.jsonl").read_text().splitlines()]
    return [decode_audio(REAL_SPEECH_DIR / r["audio_filepath"]) for r in rows], [r["text"] for r in rows]


def _decode(backbone: WhisperBackbone, audio: np.ndarray, vad: VadFilterOptions | None) -> Transcription:
    if vad is None:
        return transcribe(backbone, [audio])[0]
    filtered = remove_silence(audio, silero_probabilities, vad)
    if not len(filtered.audio):
        return Transcription("", "en", filtered.original_seconds)
    return filtered.restore(transcribe(backbone, [filtered.audio])[0])


def _wer(refs: list[str], hyps: list[str]) -> float:
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    norm = EnglishTextNormalizer({})
    return round(wer([norm(r) for r in refs], [norm(h) for h in hyps]), 4)


def _silent_hour(audios: list[np.ndarray], hours: float, noise_dbfs: float | None, seed: int) -> np.ndarray:
    total = int(hours * 3600 * SAMPLE_RATE_HZ)
    rng = np.random.default_rng(seed)
    audio = np.zeros(total, dtype=np.float32)
    if noise_dbfs is not None:
        audio += (rng.standard_normal(total) * 10 ** (noise_dbfs / 20)).astype(np.float32)
    slot = total // len(audios)
    for i, clip in enumerate(audios):
        start = i * slot + (slot - len(clip)) // 2
        audio[start: start + len(clip)] += clip
    return audio


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, round(time.perf_counter() - start, 2)


def run(*, backbone: str = "tiny.en", cache_dir: Path, hours: float = 1.0, pad_seconds: float = 10.0,
        noise_dbfs: float | None = -70.0, threads: int | None = None, seed: int = 0, quiet: bool = True) -> dict:
    """Both measurements, filter off and on; ``quiet=False``: a progress bar (one step per decode) on a terminal."""
    if threads:
        torch.set_num_threads(threads)
    bb = WhisperBackbone.load(backbone, cache_dir=cache_dir, device="cpu")
    audios, refs = _references()
    vad = VadFilterOptions()
    transcribe(bb, [audios[0]])  # warm-up
    pad = np.zeros(int(pad_seconds * SAMPLE_RATE_HZ), dtype=np.float32)
    padded = [np.concatenate([pad, a, pad]) for a in audios]
    progress = bar(6, "bench vad", "decode", quiet)
    result: dict = {"backbone": backbone, "threads": torch.get_num_threads(), "utterances": len(audios),
                    "real_speech": {}, "silent_hour": {"hours": hours, "noise_dbfs": noise_dbfs}}
    for name, clips in (("as_is", audios), (f"padded_{pad_seconds:g}s", padded)):
        for key, options in (("off", None), ("on", vad)):
            hyps, seconds = _timed(lambda clips=clips, options=options: [_decode(bb, a, options).text for a in clips])
            result["real_speech"][f"{name}_wer_vad_{key}"] = _wer(refs, hyps)
            result["real_speech"][f"{name}_seconds_vad_{key}"] = seconds
            progress.update(1)

    hour = _silent_hour(audios, hours, noise_dbfs, seed)
    reference = " ".join(refs)
    hour_result = result["silent_hour"]
    _, hour_result["vad_seconds"] = _timed(lambda: remove_silence(hour, silero_probabilities, vad))
    try:
        from faster_whisper.vad import get_speech_timestamps

        _, hour_result["faster_whisper_vad_seconds"] = _timed(lambda: get_speech_timestamps(hour))
    except ImportError:
        pass
    for key, options in (("on", vad), ("off", None)):
        out, seconds = _timed(lambda options=options: _decode(bb, hour, options))
        hour_result[f"seconds_vad_{key}"] = seconds
        hour_result[f"wer_vad_{key}"] = _wer([reference], [out.text])
        hour_result[f"words_vad_{key}"] = len(out.text.split())
        hour_result[f"segments_vad_{key}"] = len(out.segments)
        progress.update(1)
    progress.close()
    hour_result["reference_words"] = len(reference.split())
    hour_result["speedup"] = round(hour_result["seconds_vad_off"] / max(hour_result["seconds_vad_on"], 1e-9), 1)
    return result
