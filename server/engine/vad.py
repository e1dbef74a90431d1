"""Voice activity detection for streaming endpointing: Silero VAD (ONNX) or a plain energy gate.

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

from ..audio import SAMPLE_RATE_HZ
from ..errors import InvalidInput

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
