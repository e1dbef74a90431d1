"""A file's transcript as it is decoded: text deltas, then the whole result.

This is the seam between the decode loop, which produces text incrementally, and the transports that
stream it (``stream=true`` server-sent events). Audio longer than one Whisper window is cut at the
quietest moment near each 30 s boundary and each piece goes through the engine (and its batching) in
turn. While a piece decodes, the decode worker hands over each piece of new stable text at step
boundaries (the decoder's ``listener``; token by token for greedy decoding, a window at a time for
beam search and sampling), and it becomes a delta at once. The deltas concatenate exactly to the final
text. With ``include[]=logprobs`` or an N-best rescorer (which may change the text after decoding)
each piece's text is sent when it is done, one delta per segment (per piece with log-probabilities).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

import numpy as np

from ..audio import SAMPLE_RATE_HZ
from ..decoding import DecodingOptions, Segment, TokenLogprob, Transcription
from .engine import AdapterRef, Engine

log = logging.getLogger(__name__)

WINDOW_S = 30.0  # Whisper's window
PAUSE_SEARCH_S = 5.0  # a long file is cut at the quietest point in the last 5 s before each window's end
PAUSE_FRAME_S = 0.05  # energy is compared over 50 ms frames


@dataclass(frozen=True)
class TextDelta:
    """New text: ``text`` continues what came before (a leading space between segments)."""

    text: str
    segments: list[Segment] = field(default_factory=list)  # what it covers, when sent a segment at a time
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
        # the rescorer may replace the decoded text; log-probabilities travel with whole segments
        live = self.rescorer is None and not self.options.logprobs
        for index, (start, end) in enumerate(spans):
            options = self.options if index == 0 else replace(self.options, prefix=None)  # the first window's
            lead = " " if segments else ""  # between the text of two pieces
            if live:
                sent: list[str] = []
                async for item in self._decode_live(self.audio[start:end], options):
                    if isinstance(item, str):
                        yield TextDelta((lead if not sent else "") + item)
                        sent.append(item)
                    else:
                        result = item
                rest = _remainder(result.text, "".join(sent))
                if rest:
                    yield TextDelta((lead if not sent else "") + rest)
            else:
                result = await self.engine.transcribe_audio(self.audio[start:end], options, self.adapter,
                                                            self.rescorer, tenant=self.tenant)
            language = language or result.language
            nbest = result.nbest if len(spans) == 1 else []  # an N-best list covers one window
            moved = [_shifted(seg, len(segments) + i, start / SAMPLE_RATE_HZ) for i, seg in enumerate(result.segments)]
            if not live:
                for delta in _deltas(moved, result.logprobs, first=not segments):
                    yield delta
            segments += moved
            if logprobs is not None:
                logprobs += result.logprobs or []
        text = " ".join(s.text for s in segments)
        yield Transcription(text, language or "en", len(self.audio) / SAMPLE_RATE_HZ, segments, nbest, logprobs)

    async def _decode_live(self, audio: np.ndarray, options: DecodingOptions) -> AsyncIterator[str | Transcription]:
        """Decode ``audio`` through the engine: the pieces of text the worker hands over as they come,
        then the result. Leaving early (a client that hung up) withdraws the decode."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str] = asyncio.Queue()

        def listener(text: str) -> None:  # on the decode worker's thread
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is listening
                loop.call_soon_threadsafe(pieces.put_nowait, text)

        task = asyncio.ensure_future(self.engine.transcribe_audio(
            audio, options, self.adapter, self.rescorer, tenant=self.tenant, listener=listener))
        getter: asyncio.Future | None = None
        try:
            while not task.done():
                getter = asyncio.ensure_future(pieces.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                else:
                    getter.cancel()
            # the worker hands over every piece before it resolves the job: they are all queued by now
            while not pieces.empty():
                yield pieces.get_nowait()
            yield task.result()
        finally:
            if getter is not None and not getter.done():
                getter.cancel()
            if not task.done():
                task.cancel()


def _remainder(text: str, sent: str) -> str:
    """What of ``text`` was not sent yet (the decoder only ever sends a prefix of its result)."""
    if text.startswith(sent):
        return text[len(sent):]
    log.error("streamed text %r is not a prefix of the result %r", sent, text)
    return ""


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
                               adapter: AdapterRef | None = None, rescore: str | None = None) -> FileTranscript:
    """Resolve the request and decode the file as :meth:`Engine.transcribe` does, so every error
    (unknown model, bad audio, ...) is raised here, before anything is streamed."""
    resolved = engine.resolve(tenant, adapter, rescore)
    audio = await asyncio.to_thread(engine.decode_file, data)
    rescorer = resolved.rescorer_for(len(audio) / SAMPLE_RATE_HZ)
    return FileTranscript(engine, audio, options, resolved.adapter, rescorer, tenant)
