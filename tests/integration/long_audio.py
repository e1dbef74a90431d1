"""Long audio that is cheap to send: real speech repeated with long pauses, as FLAC."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf
from splitasr.audio import SAMPLE_RATE_HZ, decode_audio


def long_speech_flac(path: str, seconds: float) -> bytes:
    """``path``'s speech repeated with 9 s pauses up to ``seconds`` (under the servers' upload limits):
    many 30 s windows of work, each with speech in it."""
    speech = decode_audio(path)
    pause = np.zeros(9 * SAMPLE_RATE_HZ, dtype=np.float32)
    pieces, total = [], 0
    while total < seconds * SAMPLE_RATE_HZ:
        pieces += [speech, pause]
        total += len(speech) + len(pause)
    buf = io.BytesIO()
    sf.write(buf, np.concatenate(pieces), SAMPLE_RATE_HZ, format="FLAC")
    return buf.getvalue()
