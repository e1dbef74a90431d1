"""Voice activity detection: Silero VAD (ONNX) or a plain energy gate for streaming endpointing, and
Silero's frame probabilities of a whole file for the VAD filter (:mod:`splitasr.audio.vad_filter`).

Silero's ONNX model ships inside the ``silero-vad`` wheel and runs here with onnxruntime directly.
The package itself is never imported: its ``__init__`` imports torch and calls
``torch.set_num_threads(1)``, which would slow the backbone down for the whole process.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import InvalidInput
from . import SAMPLE_RATE_HZ

FRAME_SAMPLES = 512  # 32 ms at 16 kHz: the frame size Silero VAD v5+ expects
_CONTEXT_SAMPLES = 64  # Silero v5+ prepends the previous frame's last 64 samples
VAD_KINDS = ("silero", "energy")


class Vad(Protocol):
    """Stateful per stream: feed consecutive 512-sample frames, get a speech probability each."""

    def __call__(self, frame: np.ndarray) -> float: ...


def silero_model_path() -> Path:
    spec = importlib.util.find_spec("silero_vad")  # locates the package without importing it
    if spec is None or spec.origin is None:
        raise InvalidInput("streaming VAD 'silero' needs the silero-vad package (pip install -e '.[server]')")
    return Path(spec.origin).parent / "data" / "silero_vad.onnx"


@functools.lru_cache(maxsize=1)
def _silero_session():
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # frames are tiny: threads cost more than they save
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(silero_model_path()), sess_options=options,
                                        providers=["CPUExecutionProvider"])


class SileroVad:
    """One stream's Silero state; the ONNX session is shared (``run`` is thread-safe)."""

    def __init__(self) -> None:
        self._session = _silero_session()
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(_CONTEXT_SAMPLES, dtype=np.float32)
        self._rate = np.array(SAMPLE_RATE_HZ, dtype=np.int64)

    def __call__(self, frame: np.ndarray) -> float:
        x = np.concatenate([self._context, frame.astype(np.float32, copy=False)])[None, :]
        out, self._state = self._session.run(None, {"input": x, "state": self._state, "sr": self._rate})
        self._context = x[0, -_CONTEXT_SAMPLES:]
        return float(out[0, 0])


class EnergyVad:
    """Speech = frame energy above ``threshold_dbfs``; a fallback with no model (noisy audio fools it)."""

    def __init__(self, threshold_dbfs: float = -42.0) -> None:
        self.threshold_dbfs = threshold_dbfs

    def __call__(self, frame: np.ndarray) -> float:
        rms = float(np.sqrt(np.mean(np.square(frame, dtype=np.float64)) + 1e-12))
        return 1.0 if 20 * np.log10(rms) > self.threshold_dbfs else 0.0


def make_vad(kind: str) -> Vad:
    if kind == "silero":
        return SileroVad()
    if kind == "energy":
        return EnergyVad()
    raise InvalidInput(f"unknown VAD {kind!r}; use one of {', '.join(VAD_KINDS)}")


# Whole files (the VAD filter) -------------------------------------------------------------------
MAX_LANES = 16
MIN_LANE_FRAMES = 1024  # ~33 s: shorter audio runs as one lane
LANE_WARMUP_FRAMES = 128  # ~4 s decoded before a lane's own frames, so its state has settled


def silero_probabilities(audio: np.ndarray) -> np.ndarray:
    """Silero's speech probability for every 512-sample frame of a whole file (last frame zero-padded).

    Silero is recurrent, so a file is one long sequence of tiny steps. A long file is cut into up to
    MAX_LANES lanes decoded side by side as one batch (one ONNX call per step for all of them, about
    2.5× faster than one lane); each lane first decodes the LANE_WARMUP_FRAMES before its own part
    and discards them, so its state has settled. The recurrent state still remembers a little more
    than that in speech: next to a lane's start, a probability can differ from a single-lane decode by
    a few hundredths, which can move a speech edge by a frame or two (32 ms each), well under the
    filter's 400 ms padding.
    """
    n = -(-len(audio) // FRAME_SAMPLES)
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    frames = np.zeros(n * FRAME_SAMPLES, dtype=np.float32)
    frames[: len(audio)] = audio
    frames = frames.reshape(n, FRAME_SAMPLES)
    context = np.zeros((n, _CONTEXT_SAMPLES), dtype=np.float32)
    context[1:] = frames[:-1, -_CONTEXT_SAMPLES:]
    inputs = np.concatenate([context, frames], axis=1)
    lanes = max(1, min(MAX_LANES, n // MIN_LANE_FRAMES))
    size = -(-n // lanes)
    owned = [(k * size, min(n, (k + 1) * size)) for k in range(lanes)]
    starts = np.array([max(0, begin - LANE_WARMUP_FRAMES) for begin, _ in owned])
    steps = max(end - start for (_, end), start in zip(owned, starts))
    session, state = _silero_session(), np.zeros((2, lanes, 128), dtype=np.float32)
    rate = np.array(SAMPLE_RATE_HZ, dtype=np.int64)
    out = np.zeros((steps, lanes), dtype=np.float32)
    for t in range(steps):
        rows = np.minimum(starts + t, n - 1)  # a finished lane repeats its last frame; discarded below
        step, state = session.run(None, {"input": inputs[rows], "state": state, "sr": rate})
        out[t] = step[:, 0]
    probs = np.empty(n, dtype=np.float32)
    for k, (begin, end) in enumerate(owned):
        probs[begin:end] = out[begin - starts[k] : end - starts[k], k]
    return probs


# Is there speech at all? (a window that failed its first decode) -----------------------------------
SPEECH_PROBABILITY = 0.5
MIN_SPEECH_FRAMES = 4  # 128 ms of frames above SPEECH_PROBABILITY
_CHECK_PEAK = 0.5  # the audio is scaled to this peak first: Silero misses speech quieter than ~-50 dBFS,
# which Whisper still transcribes, while noise scaled up stays noise to it (white, brown, hum, clicks)


def has_speech(audio: np.ndarray) -> bool:
    """Whether Silero finds at least 128 ms of speech in ``audio`` (any level; ~0.2 s per 30 s here)."""
    peak = float(np.abs(audio).max()) if len(audio) else 0.0
    if peak <= 0.0:
        return False
    probs = silero_probabilities((audio * (_CHECK_PEAK / peak)).astype(np.float32))
    return int((probs >= SPEECH_PROBABILITY).sum()) >= MIN_SPEECH_FRAMES
