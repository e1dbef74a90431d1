"""Raw PCM as it arrives in chunks (a stream's LINEAR16 audio, or one unary request's)."""

from __future__ import annotations

import numpy as np
import soxr

from ..errors import BadAudio
from . import SAMPLE_RATE_HZ


class Linear16Decoder:
    """Raw 16-bit little-endian mono PCM chunks at ``rate_hz`` -> float32 at 16 kHz."""

    def __init__(self, rate_hz: int):
        if not 4_000 <= rate_hz <= 384_000:
            raise BadAudio(f"sample_rate_hz must be 4000..384000 for LINEAR16, got {rate_hz}")
        self._carry = b""
        self._resampler = None if rate_hz == SAMPLE_RATE_HZ else soxr.ResampleStream(rate_hz, SAMPLE_RATE_HZ, 1)

    def __call__(self, data: bytes, last: bool = False) -> np.ndarray:
        data = self._carry + data
        usable = len(data) - len(data) % 2
        self._carry = data[usable:]
        samples = np.frombuffer(data[:usable], dtype="<i2").astype(np.float32) / 32768.0
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples, last=last)
        return samples
