"""The streaming policy for Whisper: local agreement over a growing buffer, VAD endpointing.

Whisper decodes whole windows, not frames, so a stream keeps a growing buffer of the current
utterance and re-decodes it every ``interim_interval_s`` of new audio (through the engine's batching
scheduler, so many streams share forward passes). Words on which the last two hypotheses agree are
*stable* (local agreement, as in whisper_streaming); the rest may still change. Stable words stay
committed for the rest of the utterance and become a forced decoder prefix of its next interims, so an
interim generates only the unstable tail (as whisper_streaming and SimulStreaming do); the final decodes
the whole utterance freely. Each part's stability comes from the agreement: the committed words'
from how many hypotheses in a row confirmed them, the tail's from how much of it the previous
hypothesis already had. A voice activity
detector ends the utterance after ``endpoint_silence_s`` of silence following speech: the buffer is
decoded once more into a final result and the next utterance starts. Half-close and a full buffer
(``max_utterance_s``, Whisper's 30 s window) finalise too. Audio before any speech is kept only as a
short lead-in, so silence costs no decoding.

Finals arrive soon after speech ends because the buffer is decoded speculatively once
``speculate_after_s`` of silence follows speech; when the utterance then ends, that hypothesis already
covers all of its speech (only silence came after) and becomes the final without another decode.

Decodes carry a priority for the engine's scheduler: the speculative decode and the final are
:data:`~.worker.PRIORITY_FINAL` (the user is waiting for them), interims
:data:`~.worker.PRIORITY_INTERIM`. Once speech has paused for ``speculate_after_s`` no new interim
starts for the utterance; when the utterance ends (endpoint, length limit, half-close), an interim
still waiting or decoding is withdrawn (its task is cancelled, which takes it out of the queue or the
running batch) so the final goes first. (An interim in flight at a mere pause is left to finish:
speech often resumes, and under load withdrawing it there would leave a long utterance no interim.)
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

import numpy as np

from .. import observability
from ..audio import SAMPLE_RATE_HZ
from ..audio.vad import FRAME_SAMPLES, Vad
from ..decoding import DecodingOptions, Transcription
from .worker import PRIORITY_FINAL, PRIORITY_INTERIM

MIN_STABILITY = 0.05  # of a tail no earlier hypothesis shared


@dataclass(frozen=True)
class StreamPolicy:
    interim_interval_s: float = 0.5  # re-decode after this much new audio (one decode in flight at a time)
    endpoint_silence_s: float = 0.5  # silence after speech that ends an utterance
    max_utterance_s: float = 30.0  # finalise when the buffer reaches this (Whisper's window)
    speech_threshold: float = 0.5  # VAD probability that counts as speech
    min_speech_s: float = 0.064  # consecutive speech needed to start an utterance (ignores clicks)
    lead_in_s: float = 0.3  # audio kept before speech starts
    tail_s: float = 0.2  # audio kept after the last speech frame
    speculate_after_s: float = 0.15  # silence after which the buffer is decoded ahead of the endpoint
    reuse_margin_s: float = 0.1  # a decode covering speech end + this much can serve as the final
    prefix_interims: bool = True  # committed words are the forced prefix of the next interims


@dataclass
class Interim:
    utterance: int
    stable: str
    unstable: str
    start_s: float  # stream time
    end_s: float
    stable_stability: float = 0.0  # from the agreement (see LocalAgreement)
    unstable_stability: float = 0.0


@dataclass
class Final:
    utterance: int
    result: Transcription
    start_s: float
    end_s: float


@dataclass
class FinalText:
    """With ``final_text``: a piece of an utterance's final text while its final decode runs (greedy
    decoding: a word or so at a time). The pieces concatenate to the start of ``Final.result.text``;
    a final served by an earlier decode that already covered the speech sends none."""

    utterance: int
    text: str


@dataclass
class SpeechEvent:
    """With ``speech_events``: speech began (``started``, at its onset less the lead-in) or the
    utterance was cut (at its end: an endpoint, a full buffer, ``end_utterance`` or half-close)."""

    utterance: int
    started: bool
    at_s: float  # stream time


@dataclass
class _Utterance:
    index: int
    start: int  # stream sample where its audio starts
    audio: np.ndarray
    speech_end: int  # samples into ``audio`` where the last speech frame ends
    cut_at: float = field(default_factory=time.perf_counter)  # when the utterance ended


def _norm(word: str) -> str:
    return re.sub(r"[^\w']", "", word.lower())


def agreed_prefix(a: list[str], b: list[str]) -> int:
    """Number of leading words two hypotheses share (ignoring case and punctuation)."""
    n = 0
    for x, y in zip(a, b):
        if _norm(x) != _norm(y):
            break
        n += 1
    return n


class LocalAgreement:
    """Splits each new hypothesis into a committed prefix (the words two hypotheses in a row agreed on;
    never shortened while hypotheses keep them) and an unstable rest, each with a stability.

    The committed words' stability is 1 - 2^-(n + 1) after n hypotheses in a row confirmed the newest
    of them (0.75 when two first agree, then 0.875 ...); the tail's is half the share of its words the
    previous hypothesis had at the same place (at least MIN_STABILITY): text that keeps coming back is
    likelier to stay."""

    def __init__(self) -> None:
        self._previous: list[str] = []
        self._committed = 0
        self._confirmed = 0

    @property
    def committed(self) -> str:
        """The committed words (the forced prefix of the next interim)."""
        return " ".join(self._previous[: self._committed])

    def update(self, text: str) -> tuple[str, float, str, float]:
        """-> (committed text, its stability, unstable text, its stability)."""
        words = text.split()
        committed = min(max(self._committed, agreed_prefix(self._previous, words)), len(words))
        self._confirmed = 1 if committed > self._committed else self._confirmed + 1
        tail, before = words[committed:], self._previous[committed:]
        shared = sum(_norm(a) == _norm(b) for a, b in zip(tail, before))
        self._previous, self._committed = words, committed
        stable = 1 - 0.5 ** (self._confirmed + 1) if committed else 0.0
        unstable = max(MIN_STABILITY, 0.5 * shared / len(tail)) if tail else 0.0
        return " ".join(words[:committed]), round(stable, 4), " ".join(tail), round(unstable, 4)


def stream_options(options: DecodingOptions, priority: int, prefix: str = "") -> DecodingOptions:
    """A stream decode's options: interims force the committed words (``prefix``) and skip Whisper's
    temperature fallback (an interim is replaced within moments; five hotter passes would cost more
    than it is worth, and a forced prefix fails the thresholds more often); finals keep ``options``."""
    if priority != PRIORITY_INTERIM:
        return options
    return replace(options, prefix=options.prefix or prefix or None, compression_ratio_threshold=None,
                   logprob_threshold=None)


# ``decode(audio, priority)``: PRIORITY_FINAL or PRIORITY_INTERIM (see :mod:`.worker`); with
# ``final_text``, finals are decoded as ``decode(audio, priority, listener)`` (the engine's listener)
Decode = Callable[..., Awaitable[Transcription]]


@dataclass
class StreamingSession:
    """One stream's state. ``push`` audio and ``close``; ``run`` decodes and puts events on ``events``
    (Interim, Final, SpeechEvent when ``speech_events``, an exception, then None at the end)."""

    decode: Decode
    vad: Vad
    policy: StreamPolicy = field(default_factory=StreamPolicy)
    interim_results: bool = True
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    speech_events: bool = False  # also put SpeechEvent on ``events`` (in order with the others)
    final_text: bool = False  # also put FinalText on ``events`` while a cut utterance's final decodes

    def __post_init__(self) -> None:
        self._rate = SAMPLE_RATE_HZ
        self._pending_vad = np.zeros(0, np.float32)
        self._buffer: list[np.ndarray] = []
        self._buffer_len = 0
        self._buffer_start = 0  # stream sample of the buffer's first sample
        self._position = 0  # stream samples received and run through the VAD
        self._speech_run = 0  # consecutive speech frames
        self._last_speech_end: int | None = None  # set while the utterance has speech
        self._finals: deque[_Utterance] = deque()
        self._utterances = 0
        self._decoded_len = 0  # buffer length at the last decode of this utterance
        self._cache: tuple[int, int, Transcription] | None = None  # (utterance, samples decoded, result)
        self._agreement = LocalAgreement()
        self._closed = False
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()  # an utterance was cut: an interim in flight yields

    @property
    def received_seconds(self) -> float:
        return (self._position + len(self._pending_vad)) / self._rate

    # input side ----------------------------------------------------------------------------------
    def push(self, samples: np.ndarray) -> None:
        """Add 16 kHz audio. Runs the VAD frame by frame (cheap) and cuts utterances at endpoints."""
        data = np.concatenate([self._pending_vad, samples]) if len(self._pending_vad) else samples
        whole = len(data) - len(data) % FRAME_SAMPLES
        self._pending_vad = data[whole:]
        p = self.policy
        for start in range(0, whole, FRAME_SAMPLES):
            frame = data[start: start + FRAME_SAMPLES]
            self._append(frame)
            if self.vad(frame) >= p.speech_threshold:
                self._speech_run += 1
                if self._last_speech_end is not None or self._speech_run * FRAME_SAMPLES >= p.min_speech_s * self._rate:
                    if self._last_speech_end is None:
                        onset = self._position - self._speech_run * FRAME_SAMPLES - int(p.lead_in_s * self._rate)
                        self._speech_event(True, max(self._buffer_start, onset))
                    self._last_speech_end = self._position
            else:
                self._speech_run = 0
            if self._last_speech_end is None:
                self._trim_lead_in()
            elif self._position - self._last_speech_end >= p.endpoint_silence_s * self._rate:
                self._cut(min(self._position, self._last_speech_end + int(p.tail_s * self._rate)))
            elif self._buffer_len >= p.max_utterance_s * self._rate:
                self._cut(self._position)
        self._wake.set()

    def close(self) -> None:
        """The client half-closed: finalise what is left (if it held speech) and end."""
        if len(self._pending_vad):
            self._append(self._pending_vad)
            self._pending_vad = np.zeros(0, np.float32)
        if self._last_speech_end is not None:
            self._cut(self._position)
        self._closed = True
        self._wake.set()

    def end_utterance(self) -> int | None:
        """End the utterance in progress now, as an endpoint would (a client's commit): its index,
        or None when it holds no speech."""
        if len(self._pending_vad):
            self._append(self._pending_vad)
            self._pending_vad = np.zeros(0, np.float32)
        if self._last_speech_end is None:
            return None
        index = self._utterances
        self._cut(self._position)
        self._wake.set()
        return index

    def discard_utterance(self) -> int:
        """Drop the audio of the utterance in progress (a client's clear) and return its index;
        utterances already cut still get their finals. The next utterance has a new index."""
        index = self._utterances
        self._pending_vad = np.zeros(0, np.float32)
        self._buffer, self._buffer_len, self._buffer_start = [], 0, self._position
        self._last_speech_end, self._speech_run, self._decoded_len = None, 0, 0
        self._utterances += 1
        self._agreement = LocalAgreement()
        return index

    def _speech_event(self, started: bool, at: int) -> None:
        if self.speech_events:
            self.events.put_nowait(SpeechEvent(self._utterances, started, at / self._rate))

    def _append(self, frame: np.ndarray) -> None:
        self._buffer.append(frame)
        self._buffer_len += len(frame)
        self._position += len(frame)

    def _audio(self) -> np.ndarray:
        if len(self._buffer) > 1:
            self._buffer = [np.concatenate(self._buffer)]
        return self._buffer[0] if self._buffer else np.zeros(0, np.float32)

    def _trim_lead_in(self) -> None:
        keep = int(self.policy.lead_in_s * self._rate)
        if self._buffer_len > keep + FRAME_SAMPLES * 8:  # trim in batches, not every frame
            audio = self._audio()[-keep:]
            self._buffer_start += self._buffer_len - len(audio)
            self._buffer, self._buffer_len = [audio], len(audio)

    def _cut(self, end: int) -> None:
        audio = self._audio()
        split = end - self._buffer_start
        speech_end = (self._last_speech_end or end) - self._buffer_start
        self._finals.append(_Utterance(self._utterances, self._buffer_start, audio[:split], speech_end))
        self._speech_event(False, end)
        rest = audio[split:]
        self._utterances += 1
        self._buffer, self._buffer_len, self._buffer_start = [rest], len(rest), end
        self._last_speech_end, self._speech_run, self._decoded_len = None, 0, 0
        self._agreement = LocalAgreement()
        self._urgent.set()

    # decoding side -------------------------------------------------------------------------------
    def _speech_paused(self) -> bool:
        """The utterance held speech and ``speculate_after_s`` of silence followed it."""
        if self._last_speech_end is None:
            return False
        return self._position - self._last_speech_end >= self.policy.speculate_after_s * self._rate

    def _wanted_decode(self) -> int | None:
        """The priority of the decode the utterance in progress wants now, or None."""
        if self._last_speech_end is None:
            return None
        if self._speech_paused():  # speech (may have) ended: decode for the final, no more interims
            speech_end = self._last_speech_end - self._buffer_start
            return PRIORITY_FINAL if self._decoded_len < speech_end else None
        grown = self._buffer_len - self._decoded_len >= self.policy.interim_interval_s * self._rate
        return PRIORITY_INTERIM if self.interim_results and grown else None

    async def _decode(self, utterance: int, audio: np.ndarray, priority: int,
                      speech_end: int | None = None, text: bool = False, prefix: str = "") -> Transcription:
        """``speech_end`` (finals): an earlier decode reaching past it saw all the speech: reuse it.
        ``text``: put its text on ``events`` as it is decoded (FinalText). ``prefix`` (interims): the
        committed words, forced; the result's text is then only what follows them, and it is not kept
        for reuse (a final decodes the utterance freely)."""
        if prefix:
            return await self.decode(audio, priority, prefix=prefix)
        if self._cache and self._cache[0] == utterance:
            covered = self._cache[1]
            margin = int(self.policy.reuse_margin_s * self._rate)
            enough = len(audio) if speech_end is None else min(len(audio), speech_end + margin)
            if covered >= enough:  # past the speech end it held only silence (else no endpoint yet)
                return self._cache[2]
        if text:
            loop = asyncio.get_running_loop()

            def listener(piece: str) -> None:  # on the decode worker's thread
                with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is listening
                    loop.call_soon_threadsafe(self.events.put_nowait, FinalText(utterance, piece))

            result = await self.decode(audio, priority, listener)
        else:
            result = await self.decode(audio, priority)
        self._cache = (utterance, len(audio), result)
        return result

    async def _interim(self, utterance: int, audio: np.ndarray) -> str | None:
        """Decode an interim (its whole text: the committed words, then what the decoder added after
        them) unless the utterance is cut meanwhile: then the decode is withdrawn (cancelling its task
        takes it out of the engine's queue or batch) and None returned."""
        self._urgent.clear()
        prefix = self._agreement.committed if self.policy.prefix_interims else ""
        decode = asyncio.ensure_future(self._decode(utterance, audio, PRIORITY_INTERIM, prefix=prefix))
        urgent = asyncio.ensure_future(self._urgent.wait())
        try:
            await asyncio.wait({decode, urgent}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            urgent.cancel()
            if not decode.done():
                decode.cancel()
        try:
            result = await decode
            return f"{prefix} {result.text.strip()}".strip() if prefix else result.text
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():
                raise  # the session itself is being cancelled
            return None

    async def run(self) -> None:
        """Decode until closed and drained; always ends with None on ``events``."""
        try:
            while True:
                if self._finals:
                    u = self._finals.popleft()
                    result = await self._decode(u.index, u.audio, PRIORITY_FINAL, u.speech_end,
                                                text=self.final_text)
                    end = u.start + len(u.audio)
                    observability.observe_stream_final(time.perf_counter() - u.cut_at)
                    await self.events.put(Final(u.index, result, u.start / self._rate, end / self._rate))
                elif self._closed:
                    return
                elif (priority := self._wanted_decode()) is not None:
                    index, audio, start = self._utterances, self._audio(), self._buffer_start
                    decoded_before, self._decoded_len = self._decoded_len, len(audio)
                    if priority == PRIORITY_FINAL:
                        hypothesis = (await self._decode(index, audio, priority)).text
                    elif (hypothesis := await self._interim(index, audio)) is None:  # overtaken: withdrawn
                        if index == self._utterances:
                            self._decoded_len = decoded_before
                        continue
                    if self.interim_results and index == self._utterances:  # else its final comes next
                        stable, s_stable, unstable, s_unstable = self._agreement.update(hypothesis)
                        end = (start + len(audio)) / self._rate
                        await self.events.put(Interim(index, stable, unstable, start / self._rate, end,
                                                      s_stable, s_unstable))
                else:
                    self._wake.clear()
                    await self._wake.wait()
        except Exception as exc:  # noqa: BLE001 - handed to the transport, which maps it
            await self.events.put(exc)
        finally:
            await self.events.put(None)
