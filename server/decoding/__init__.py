"""Decoding: options and result types (torch-free, :mod:`.types`), the Whisper decode loop
(:mod:`.whisper`) and CTC best-path decoding (:mod:`.ctc`).

Importing this package or its types loads no torch; :func:`transcribe` and :func:`nbest` load the
decoder on first use.
"""

from __future__ import annotations

from .types import (
    FALLBACK_TEMPERATURES,
    MAX_BEAM_SIZE,
    MAX_NBEST,
    DecodingOptions,
    Hypothesis,
    Segment,
    TokenLogprob,
    Transcription,
    Word,
    compression_ratio,
)

__all__ = [
    "FALLBACK_TEMPERATURES",
    "MAX_BEAM_SIZE",
    "MAX_NBEST",
    "DecodingOptions",
    "Hypothesis",
    "Segment",
    "TokenLogprob",
    "Transcription",
    "Word",
    "compression_ratio",
    "nbest",
    "transcribe",
]


def transcribe(backbone, audios, options: DecodingOptions | None = None, slots=None) -> list[Transcription]:
    """Transcribe 16 kHz mono arrays (any length) on ``backbone`` to the end, batched.

    ``slots``: each row's adapter slot (0 = none) on a backbone with an adapter bank. The engine serves
    requests through the same decoder with continuous batching; this is the direct form (command line,
    training, notebooks).
    """
    from .run import transcribe as run

    return run(backbone, audios, options or DecodingOptions(), slots)


def nbest(backbone, audios, options: DecodingOptions, slots=None) -> list[list[Hypothesis]]:
    """The ``options.nbest`` best distinct hypotheses of each utterance (at most 30 s, no timestamps;
    ``nbest=1`` with ``beam_size=1`` is plain greedy decoding)."""
    from dataclasses import replace

    from ..errors import InvalidInput

    if any(len(a) > 30 * 16_000 for a in audios):
        raise InvalidInput("an N-best list needs audio of at most 30 s; split longer audio first")
    options = replace(options, without_timestamps=True)
    return [t.nbest for t in transcribe(backbone, audios, options, slots)]
