"""One Realtime transcription session: client events in, server events out, over a StreamingSession.

The session converts and delegates: audio goes to the same :class:`StreamingSession` that serves gRPC
streams (VAD endpointing, interim decodes through the engine's batching, finals); its events come
back as OpenAI's. With ``server_vad`` the VAD commits each utterance; with ``turn_detection: null``
the client commits (the VAD then counts every frame as speech, so nothing is cut before the commit
except a full 30 s buffer, which is committed on its own).

Per utterance (one conversation item): ``input_audio_buffer.speech_started`` (server VAD), while it
is spoken ``conversation.item.input_audio_transcription.delta`` events carrying words on which two
interim decodes agree, then ``speech_stopped`` (server VAD), ``input_audio_buffer.committed``, deltas
with the rest of the final text (as the final decodes, when it is decoded after the commit: the
stream's ``FinalText``; else in one) and ``...transcription.completed`` with the whole ``transcript``.
A delta never takes text back: ``completed`` is the authority when a final changed earlier words.
A decode refused because the engine's queue is full is retried for about 15 s before its item
fails (``...transcription.failed``); the session itself goes on.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from collections.abc import Callable
from dataclasses import InitVar, dataclass, field, replace

import numpy as np

from ...audio import SAMPLE_RATE_HZ
from ...audio.pcm import Linear16Decoder
from ...audio.vad import make_vad
from ...config import Settings
from ...decoding import DecodingOptions, Transcription
from ...engine.engine import Engine
from ...engine.streaming import (
    Final,
    FinalText,
    Interim,
    SpeechEvent,
    StreamingSession,
    StreamPolicy,
    stream_options,
)
from ...errors import Overloaded, RateLimited, SplitASRError
from . import events as ev
from .config import SessionConfig, apply_update
from .errors import EventError

log = logging.getLogger(__name__)

# waits before retrying a decode that the full queue refused (about 15 s in all)
OVERLOAD_RETRY_S = (0.05, 0.1, 0.2, 0.4, 0.8, *([1.0] * 13))


class AlwaysSpeech:
    """The VAD of manual turns: every frame is speech, so only a commit (or a full buffer) cuts."""

    def __call__(self, frame: np.ndarray) -> float:
        return 1.0


@dataclass
class FailedDecode(Transcription):
    """What a decode that the engine refused (queue full, bad language ...) hands the stream."""

    error: SplitASRError | None = None


@dataclass
class _Item:
    id: str
    sent: str = ""  # text sent in deltas so far
    final: str = ""  # the final decode's text so far (FinalText pieces)
    manual: bool = False  # committed by the client


@dataclass
class RealtimeSession:
    """Call :meth:`handle` with each client message and run :meth:`pump`; ``send`` gets server events."""

    engine: Engine
    settings: Settings
    tenant: str
    send: Callable[[dict], None]
    model: InitVar[str | None] = None  # the connection URL's ``model``: the transcription model
    config: SessionConfig = field(init=False)
    id: str = field(default_factory=lambda: ev.new_id("sess"))

    def __post_init__(self, model: str | None) -> None:
        self.config = SessionConfig.defaults(self.engine, self.settings)
        if model:
            self.config = apply_update(self.config, {"audio": {"input": {"transcription": {"model": model}}}},
                                       self.engine, self.tenant)
        self.stream = StreamingSession(self._decode, self._vad(), self._policy(), self.config.vad,
                                       speech_events=True, final_text=True)
        self._pcm = Linear16Decoder(self.config.rate_hz)
        self._items: dict[int, _Item] = {}
        self._previous_item: str | None = None
        self._awaiting: set[int] = set()  # committed utterances whose transcript is still to come
        self._worker = asyncio.create_task(self.stream.run())
        self.send(ev.server_event("session.created", session=self.config.session_object(self.id)))

    # client events -------------------------------------------------------------------------------
    def handle(self, text: str) -> None:
        """Apply one client message; a bad one is answered with an ``error`` event (and raises only
        when the session must end)."""
        try:
            event = ev.parse_client_event(text)
            if isinstance(event, ev.SessionUpdateEvent):
                self._update(event)
            elif isinstance(event, ev.AppendEvent):
                self._append(event)
            elif isinstance(event, ev.CommitEvent):
                self._commit(event)
            else:
                self._items.pop(self.stream.discard_utterance(), None)
                self.send(ev.server_event("input_audio_buffer.cleared"))
        except EventError as exc:
            self.reject(exc)

    def reject(self, error: EventError) -> None:
        """Answer a bad event with an ``error`` event; raise it when the session must end."""
        self.send(ev.error_event(error))
        error.sent = True
        if error.fatal:
            raise error

    def _update(self, event: ev.SessionUpdateEvent) -> None:
        changes = event.session.model_dump(exclude_unset=True)
        try:
            config = apply_update(self.config, changes, self.engine, self.tenant)
        except EventError as exc:
            exc.event_id = event.event_id
            raise
        if config.rate_hz != self.config.rate_hz:
            self.stream.push(self._pcm(b"", last=True))
            self._pcm = Linear16Decoder(config.rate_hz)
        if config.vad != self.config.vad:
            self.stream.vad = self._vad(config)
        self.config = config
        self.stream.policy = self._policy()
        self.stream.interim_results = config.vad
        self.send(ev.server_event("session.updated", session=config.session_object(self.id)))

    def _append(self, event: ev.AppendEvent) -> None:
        try:
            data = base64.b64decode(event.audio, validate=True)
        except (binascii.Error, ValueError):
            raise EventError("input_audio_buffer.append: 'audio' is not valid base64", "invalid_value", "audio",
                             event.event_id) from None
        limit = self.settings.stream_max_chunk_bytes
        if len(data) > limit:
            raise EventError(f"input_audio_buffer.append: {len(data)} bytes of audio in one event exceed the limit "
                             f"of {limit} bytes; send smaller chunks (100 ms is typical)", "payload_too_large",
                             "audio", event.event_id)
        self.stream.push(self._pcm(data))
        if self.stream.received_seconds > self.settings.max_audio_seconds:
            raise EventError(f"the session's audio is longer than the limit of {self.settings.max_audio_seconds:g} s",
                             "invalid_audio", "audio", event.event_id, fatal=True)

    def _commit(self, event: ev.CommitEvent) -> None:
        committed = self.stream.end_utterance()
        if committed is None:
            what = "no speech" if self.config.vad else "no audio"
            raise EventError(f"input_audio_buffer.commit: the buffer holds {what} since the last commit",
                             "input_audio_buffer_commit_empty", None, event.event_id)
        self._item(committed).manual = True  # before its SpeechEvent is pumped: handle() does not yield

    @property
    def busy(self) -> bool:
        """Transcripts are still to come: a client waiting for them is not idle."""
        return bool(self._awaiting) or not self.stream.events.empty()

    # server events -------------------------------------------------------------------------------
    async def pump(self) -> None:
        """Turn the stream's events into server events until it ends (raises what ended it)."""
        while (event := await self.stream.events.get()) is not None:
            if isinstance(event, Exception):
                raise event
            if isinstance(event, SpeechEvent):
                self._on_speech(event)
            elif isinstance(event, Interim):
                self._on_interim(event)
            elif isinstance(event, FinalText):
                self._on_final_text(event)
            elif isinstance(event, Final):
                self._on_final(event)

    def _on_speech(self, event: SpeechEvent) -> None:
        item = self._item(event.utterance)
        ms = round(event.at_s * 1000)
        if event.started:
            if self.config.vad:
                self.send(ev.server_event("input_audio_buffer.speech_started", audio_start_ms=ms, item_id=item.id))
            return
        if self.config.vad and not item.manual:
            self.send(ev.server_event("input_audio_buffer.speech_stopped", audio_end_ms=ms, item_id=item.id))
        self.send(ev.server_event("input_audio_buffer.committed", previous_item_id=self._previous_item,
                                  item_id=item.id))
        self._previous_item = item.id
        self._awaiting.add(event.utterance)

    def _on_interim(self, event: Interim) -> None:
        item = self._item(event.utterance)
        if len(event.stable) > len(item.sent) and event.stable.startswith(item.sent):
            self._delta(item, event.stable[len(item.sent):])

    def _on_final_text(self, event: FinalText) -> None:
        item = self._item(event.utterance)
        item.final += event.text
        if len(item.final) > len(item.sent) and item.final.startswith(item.sent):
            self._delta(item, item.final[len(item.sent):])

    def _on_final(self, event: Final) -> None:
        item = self._items.pop(event.utterance, None) or _Item(ev.new_id("item"))
        self._awaiting.discard(event.utterance)
        result = event.result
        if isinstance(result, FailedDecode):
            error = EventError.from_error(result.error)
            self.send(ev.server_event("conversation.item.input_audio_transcription.failed", item_id=item.id,
                                      content_index=0, error={"type": error.type, "code": error.code,
                                                              "message": error.message, "param": None}))
            return
        if result.text.startswith(item.sent) and len(result.text) > len(item.sent):
            self._delta(item, result.text[len(item.sent):])
        usage = {"type": "duration", "seconds": round(event.end_s - event.start_s, 3)}
        self.send(ev.server_event("conversation.item.input_audio_transcription.completed", item_id=item.id,
                                  content_index=0, transcript=result.text, usage=usage))

    def _delta(self, item: _Item, text: str) -> None:
        item.sent += text
        self.send(ev.server_event("conversation.item.input_audio_transcription.delta", item_id=item.id,
                                  content_index=0, delta=text))

    def _item(self, utterance: int) -> _Item:
        if utterance not in self._items:
            self._items[utterance] = _Item(ev.new_id("item"))
        return self._items[utterance]

    # engine side ---------------------------------------------------------------------------------
    async def _decode(self, audio: np.ndarray, priority: int,
                      listener: Callable[[str], None] | None = None, prefix: str = "") -> Transcription:
        config = self.config
        options = stream_options(DecodingOptions(beam_size=self.settings.default_beam_size,
                                                 language=config.language, prompt=config.prompt), priority, prefix)
        for wait_s in (*OVERLOAD_RETRY_S, None):
            try:
                return await self.engine.transcribe_audio(audio, options, config.adapter, priority=priority,
                                                          tenant=self.tenant, key=self.id, listener=listener)
            except Overloaded as exc:  # a full queue drains in moments: a live stream waits, not fails
                if wait_s is None or isinstance(exc, RateLimited):
                    return self._failed(audio, exc)
                await asyncio.sleep(wait_s)
            except SplitASRError as exc:  # this utterance fails; the session goes on
                return self._failed(audio, exc)
        raise AssertionError("unreachable")

    def _failed(self, audio: np.ndarray, exc: SplitASRError) -> FailedDecode:
        log.warning("realtime decode failed: %s", exc)
        return FailedDecode("", self.config.language or "en", len(audio) / SAMPLE_RATE_HZ, error=exc)

    def _vad(self, config: SessionConfig | None = None):
        return make_vad(self.settings.stream_vad) if (config or self.config).vad else AlwaysSpeech()

    def _policy(self) -> StreamPolicy:
        c = self.config
        policy = StreamPolicy(interim_interval_s=self.settings.stream_interim_interval_ms / 1000,
                              endpoint_silence_s=c.silence_duration_ms / 1000, speech_threshold=c.threshold,
                              lead_in_s=c.prefix_padding_ms / 1000)
        return policy if c.vad else replace(policy, min_speech_s=0.1)

    async def close(self) -> None:
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._worker
