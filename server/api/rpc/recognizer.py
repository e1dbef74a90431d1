"""``splitasr.v1.Recognizer``: converts messages and delegates to the engine and the streaming policy."""

from __future__ import annotations

import asyncio
import contextlib
import functools

import grpc

from splitasr_device._proto import recognizer_pb2 as pb
from splitasr_device._proto import recognizer_pb2_grpc

from ...audio import decode_audio
from ...audio.ogg_opus import OggOpusDecoder
from ...audio.pcm import Linear16Decoder
from ...audio.vad import make_vad
from ...audio.vad_filter import VadFilterOptions
from ...config import Settings
from ...decoding import DecodingOptions
from ...engine.applicability import check_options
from ...engine.engine import AdapterRef, Engine
from ...engine.streaming import StreamingSession, StreamPolicy, stream_options
from ...errors import BadAudio, InvalidInput, TooLarge
from . import convert
from .interceptors import current_tenant
from .streams import hold_stream
from .validate import check_endpointing, check_recognize_config, check_streaming_config, reject_unknown_fields


class RecognizerServicer(recognizer_pb2_grpc.RecognizerServicer):
    def __init__(self, engine: Engine, settings: Settings):
        self.engine = engine
        self.settings = settings
        self.policy = StreamPolicy(interim_interval_s=settings.stream_interim_interval_ms / 1000,
                                   endpoint_silence_s=settings.stream_endpoint_silence_ms / 1000)

    # helpers -------------------------------------------------------------------------------------
    @staticmethod
    def _adapter(ref: pb.AdapterRef) -> AdapterRef:
        which = ref.WhichOneof("ref")
        return AdapterRef(sha256=ref.sha256) if which == "sha256" else AdapterRef(ref.name or None)

    def _options(self, config: pb.RecognitionConfig) -> DecodingOptions:
        # word times come from alignment wherever the backbone can align (Whisper; not CTC)
        words = self.engine.word_timestamps_available
        options = DecodingOptions(beam_size=config.beam_size or self.settings.default_beam_size,
                                  language=config.language or None, prompt=config.prompt or None,
                                  word_timestamps=words)
        check_options(self.engine.backbone, options)
        return options

    def _vad(self, config: pb.RecognitionConfig) -> VadFilterOptions | None:
        wanted = config.vad_filter if config.HasField("vad_filter") else self.settings.vad_filter
        return VadFilterOptions(min_silence_duration_ms=self.settings.vad_min_silence_ms) if wanted else None

    def _audio(self, config: pb.RecognitionConfig, data: bytes):
        if config.encoding == pb.LINEAR16:
            if not config.sample_rate_hz:
                raise BadAudio("LINEAR16 audio needs sample_rate_hz")
            audio = Linear16Decoder(config.sample_rate_hz)(data, last=True)
            if not len(audio):
                raise BadAudio("audio is empty (0 samples)")
            if len(audio) / 16_000 > self.settings.max_audio_seconds:
                raise BadAudio(f"audio is longer than the limit of {self.settings.max_audio_seconds:g} s")
            return audio
        if config.encoding == pb.OGG_OPUS:
            audio = OggOpusDecoder(max_seconds=self.settings.max_audio_seconds)(data, last=True)
            if not len(audio):
                raise BadAudio("audio is empty (0 samples)")
            return audio
        return decode_audio(data, max_seconds=self.settings.max_audio_seconds)

    def _stream_decoder(self, config: pb.RecognitionConfig) -> Linear16Decoder | OggOpusDecoder:
        """Chunks of the stream's audio -> float32 at 16 kHz, as they arrive."""
        if config.encoding == pb.OGG_OPUS:
            return OggOpusDecoder(max_seconds=self.settings.max_audio_seconds)
        return Linear16Decoder(config.sample_rate_hz or 16_000)

    # unary ---------------------------------------------------------------------------------------
    async def Recognize(self, request: pb.RecognizeRequest, context: grpc.aio.ServicerContext):
        tenant = current_tenant()
        reject_unknown_fields(request)
        check_recognize_config(request.config)
        config = request.config
        options = self._options(config)
        work = self.engine.transcribe(request.audio, options, tenant=tenant, adapter=self._adapter(config.adapter),
                                      rescore=config.rescore or None, vad=self._vad(config),
                                      decode=functools.partial(self._audio, config))
        # the client's deadline: give up (and dequeue) when it passes
        return convert.recognize_response(await asyncio.wait_for(work, context.time_remaining()))

    # streaming -----------------------------------------------------------------------------------
    async def _next(self, requests):
        """The stream's next message (None at its end). A client that goes quiet would hold one of
        the MAX_STREAMS slots for ever: after STREAM_IDLE_TIMEOUT_S of silence the stream fails."""
        timeout = self.settings.stream_idle_timeout_s
        try:
            return await asyncio.wait_for(anext(requests, None), timeout)
        except asyncio.TimeoutError:  # the builtin TimeoutError from Python 3.11 on
            raise InvalidInput(f"no message for {timeout:g} s: a stream must keep sending audio "
                               "(silence too), then close its side when done") from None

    async def _read_audio(self, requests, session: StreamingSession,
                          decoder: Linear16Decoder | OggOpusDecoder) -> None:
        limit = self.settings.stream_max_chunk_bytes
        while (request := await self._next(requests)) is not None:
            if request.WhichOneof("request") != "audio":
                raise InvalidInput("streaming_config must be the first message, and only the first")
            reject_unknown_fields(request)
            if len(request.audio) > limit:
                raise TooLarge(f"audio chunk of {len(request.audio)} bytes exceeds the limit of {limit} bytes; "
                               "send smaller chunks (100 ms is typical)")
            session.push(decoder(request.audio))
            if session.received_seconds > self.settings.max_audio_seconds:
                raise BadAudio(f"stream is longer than the limit of {self.settings.max_audio_seconds:g} s")
        session.push(decoder(b"", last=True))
        session.close()

    async def StreamingRecognize(self, request_iterator, context: grpc.aio.ServicerContext):
        tenant = current_tenant()
        request_iterator = aiter(request_iterator)
        first = await self._next(request_iterator)
        if first is None or first.WhichOneof("request") != "streaming_config":
            raise InvalidInput("the first StreamingRecognize message must be streaming_config (adapter, "
                               "encoding, sample rate); audio follows")
        streaming = first.streaming_config
        config = streaming.config
        reject_unknown_fields(first)
        check_streaming_config(config)
        check_endpointing(config.endpointing)
        policy = convert.stream_policy(self.policy, config.endpointing)
        adapter = self.engine.resolve(tenant, self._adapter(config.adapter), "none").adapter
        options = self._options(config)
        decoder = self._stream_decoder(config)
        async with hold_stream(self.engine.streams, tenant, request_iterator):  # shared with Realtime sessions
            with self.engine.store.pinned(adapter):  # the stream holds its adapter until it ends
                session = StreamingSession(self._stream_decode(options, adapter, tenant),
                                           make_vad(self.settings.stream_vad), policy,
                                           streaming.interim_results,
                                           speech_events=streaming.voice_activity_events)
                async for response in self._respond(request_iterator, session, decoder,
                                                    streaming.time_offset_seconds):
                    yield response

    def _stream_decode(self, options: DecodingOptions, adapter: str | None, tenant: str):
        """One stream's decodes, at the priority the session gives each, under one key (a newer decode
        of the stream supersedes a queued older one)."""
        key = object()

        def decode(audio, priority: int, prefix: str = ""):
            return self.engine.transcribe_audio(audio, stream_options(options, priority, prefix), adapter,
                                                priority=priority, tenant=tenant, key=key)

        return decode

    async def _respond(self, requests, session: StreamingSession,
                       decoder: Linear16Decoder | OggOpusDecoder, offset: float):
        reader = asyncio.create_task(self._read_audio(requests, session, decoder))
        worker = asyncio.create_task(session.run())
        reader.add_done_callback(lambda t: t.cancelled() or t.exception() is None
                                 or session.events.put_nowait(t.exception()))
        try:
            while (event := await session.events.get()) is not None:
                if isinstance(event, Exception):
                    raise event
                yield convert.stream_response(event, offset)
            if reader.done() and not reader.cancelled() and reader.exception() is not None:
                raise reader.exception()
        finally:
            for task in (reader, worker):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
