"""Decode a list of utterances to the end on one backbone (the direct, non-serving form)."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence

import numpy as np

from .types import DecodingOptions, Transcription

_decoders: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (decoder, lock)
_guard = threading.Lock()


def whisper_decoder(backbone):
    """The backbone's shared decoder for direct use (one per model; callers take its lock)."""
    from .whisper.decoder import WhisperDecoder

    with _guard:
        entry = _decoders.get(backbone.model)
        if entry is None:
            entry = (WhisperDecoder(backbone), threading.Lock())
            _decoders[backbone.model] = entry
        return entry


def transcribe(backbone, audios: Sequence[np.ndarray], options: DecodingOptions,
               slots: Sequence[int] | None = None) -> list[Transcription]:
    from ..backbones.whisper import WhisperBackbone

    if not isinstance(backbone, WhisperBackbone):
        from .ctc import transcribe_ctc

        return transcribe_ctc(backbone, list(audios), options, slots)
    decoder, lock = whisper_decoder(backbone)
    with lock:
        requests = [decoder.start(a, options, int(s) if s else 0) for a, s in zip(audios, slots or [0] * len(audios))]
        decoder.run(requests)
    return [r.result for r in requests]
