"""A file's transcript as it is decoded: text deltas, then the whole result.

This is the seam between a decoder that produces text incrementally and the transports that stream it
(``stream=true`` server-sent events). Today the engine returns whole results, so the file is decoded
window by window: audio longer than one Whisper window is cut at the quietest moment near each 30 s
boundary, each window goes through the engine (and its batching) in turn, and its segments become
deltas as soon as it is done. Audio of one window gives its segments' deltas when it is decoded.
A decode loop that emits text per step can feed :class:`FileTranscript` in place of the windows.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import numpy as np

from ..audio import SAMPLE_RATE_HZ, decode_audio
from ..decoding import DecodingOptions, Segment, TokenLogprob, Transcription
from ..errors import InvalidInput, NotReady
from .engine import RESCORE_MAX_SECONDS, Engine

WINDOW_S = 30.0  # Whisper's window
PAUSE_SEARCH_S = 5.0  # a long file is cut at the quietest point in the last 5 s before each window's end
PAUSE_FRAME_S = 0.05  # energy is compared over 50 ms frames


@dataclass(frozen=True)
class TextDelta:
    """New text: ``text`` continues what came before (a leading space between segments)."""

    text: str
    segments: list[Segment]  # what the text covers, with times in the whole file
    logprobs: list[TokenLogprob] | None = None  # its tokens', with ``DecodingOptions.logprobs``


def split_at_pauses(audio: np.ndarray, window_s: float = WINDOW_S, search_s: float = PAUSE_SEARCH_S,
                    rate: int = SAMPLE_RATE_HZ) -> list[tuple[int, int]]:
    """``(start, end)`` sample ranges of at most ``window_s``, cut at the lowest-energy frame within the
    last ``search_s`` of each window, so that a cut rarely falls inside a word."""
    window, search, frame = int(window_s * rate), int(search_s * rate), int(PAUSE_FRAME_S * rate)
    spans, start = [], 0
    while len(audio) - start > window:
        lo = start + window - search
        frames = audio[lo: start + window][: (search // frame) * frame].reshape(-1, frame)
        quietest = int(np.argmin(np.square(frames, dtype=np.float64).mean(axis=1)))
        cut = lo + quietest * frame + frame // 2
        spans.append((start, cut))
        start = cut
    spans.append((start, len(audio)))
    return spans


class FileTranscript:
    """``async for item in transcript``: :class:`TextDelta` items, then the :class:`Transcription`."""

    def __init__(self, engine: Engine, audio: np.ndarray, options: DecodingOptions,
                 adapter: str | None = None, rescorer: str | None = None, tenant: str = ""):
        self.engine, self.audio, self.options = engine, audio, options
        self.adapter, self.rescorer, self.tenant = adapter, rescorer, tenant

    async def __aiter__(self) -> AsyncIterator[TextDelta | Transcription]:
        segments: list[Segment] = []
        logprobs: list[TokenLogprob] | None = [] if self.options.logprobs else None
        language, nbest = None, []
        spans = split_at_pauses(self.audio)
        for index, (start, end) in enumerate(spans):
            options = self.options if index == 0 else replace(self.options, prefix=None)  # the first window's
            result = await self.engine.transcribe_audio(self.audio[start:end], options, self.adapter,
                                                        self.rescorer, tenant=self.tenant)
            language = language or result.language
            nbest = result.nbest if len(spans) == 1 else []  # an N-best list covers one window
            moved = [_shifted(seg, len(segments) + i, start / SAMPLE_RATE_HZ) for i, seg in enumerate(result.segments)]
            for delta in _deltas(moved, result.logprobs, first=not segments):
                yield delta
            segments += moved
            if logprobs is not None:
                logprobs += result.logprobs or []
        text = " ".join(s.text for s in segments)
        yield Transcription(text, language or "en", len(self.audio) / SAMPLE_RATE_HZ, segments, nbest, logprobs)


def _shifted(segment: Segment, index: int, offset_s: float) -> Segment:
    """A window's segment with its times in the whole file."""
    words = [replace(w, start=round(w.start + offset_s, 2), end=round(w.end + offset_s, 2))
             for w in segment.words] if segment.words is not None else None
    return replace(segment, id=index, start=round(segment.start + offset_s, 2), end=round(segment.end + offset_s, 2),
                   seek=segment.seek + round(offset_s * 100), words=words)


def _deltas(segments: list[Segment], logprobs: list[TokenLogprob] | None, first: bool) -> list[TextDelta]:
    """One delta per segment; with log-probabilities (a flat list per window), one per window so that
    each delta carries exactly its own tokens'."""
    if not segments:
        return []
    lead = "" if first else " "
    if logprobs is not None:
        return [TextDelta(lead + " ".join(s.text for s in segments), segments, logprobs)]
    return [TextDelta(("" if first and i == 0 else " ") + s.text, [s]) for i, s in enumerate(segments)]


async def open_file_transcript(engine: Engine, data: bytes, options: DecodingOptions, *, tenant: str,
                               model: str | None = None, rescore: str | None = None) -> FileTranscript:
    """Resolve the request and decode the file as :meth:`Engine.transcribe` does, so every error
    (unknown model, bad audio, ...) is raised here, before anything is streamed."""
    if not engine.ready:
        raise NotReady(engine.load_error or "the backbone is still loading; retry shortly")
    adapter = engine.resolve_model(tenant, model)
    default = rescore is None
    rescorer = engine.default_rescorer(tenant) if default else engine.resolve_rescorer(tenant, rescore)
    audio = await asyncio.to_thread(decode_audio, data, max_seconds=engine.settings.max_audio_seconds)
    if len(audio) > RESCORE_MAX_SECONDS * SAMPLE_RATE_HZ:
        if rescorer and not default:
            raise InvalidInput(f"rescoring needs audio of at most {RESCORE_MAX_SECONDS} s (one N-best list); "
                               "send shorter audio or leave `rescore` out")
        rescorer = None
    return FileTranscript(engine, audio, options, adapter, rescorer, tenant)
