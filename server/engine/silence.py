"""The VAD filter in the engine: decode only a file's speech, report times on the original audio."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import numpy as np

from ..audio import SAMPLE_RATE_HZ
from ..audio.vad import silero_probabilities
from ..audio.vad_filter import VadFilterOptions, remove_silence
from ..decoding import DecodingOptions, Transcription

log = logging.getLogger(__name__)

Decode = Callable[..., Awaitable[Transcription]]  # Engine.transcribe_audio(audio, options, adapter, ...)


async def transcribe_speech(decode: Decode, audio: np.ndarray, options: DecodingOptions,
                            vad: VadFilterOptions, *args: str | None, **kwargs: str | None) -> Transcription:
    """``decode(speech, options, *args, **kwargs)`` on the speech of ``audio`` only, with times mapped back.

    Audio with no speech at all gives an empty result without decoding anything.
    """
    filtered = await asyncio.to_thread(remove_silence, audio, silero_probabilities, vad)
    log.debug("VAD filter removed %.1f of %.1f s", filtered.removed_seconds, filtered.original_seconds)
    if not len(filtered.audio):
        return Transcription("", options.language or "en", len(audio) / SAMPLE_RATE_HZ)
    return filtered.restore(await decode(filtered.audio, options, *args, **kwargs))
