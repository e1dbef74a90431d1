"""The serving engine: one frozen backbone, an adapter store, a slot pool and the decode worker.

Transports (REST, gRPC) call only this. Every request names a tenant; ``model`` is the backbone
(or ``whisper-1``) or one of that tenant's adapters. Requests with different adapters, options and
lengths decode in one running batch (:mod:`splitasr.engine.worker`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from .. import observability
from ..adapters import Adapter, AdapterLimits, BackboneSpec, attach_bank, bank_layers, load_adapter
from ..adapters.pool import SlotPool
from ..audio import SAMPLE_RATE_HZ, decode_audio
from ..audio.vad import has_speech
from ..audio.vad_filter import VadFilterOptions
from ..backbones.loader import Backbone, load_backbone
from ..backbones.whisper import WhisperBackbone
from ..config import Settings
from ..decoding import DecodingOptions, Transcription
from ..errors import InvalidInput, NotFound, NotReady
from ..rescoring.service import KIND as RESCORER_KIND
from ..rescoring.service import RescoringService, is_rescorer_file
from ..storage import AdapterRecord, open_store
from ..tenants import AuthFailureLimiter, RateLimiter
from .silence import transcribe_speech
from .streams import StreamSlots
from .worker import PRIORITY_FILE, DecodeWorker, Job

log = logging.getLogger(__name__)

# OpenAI clients default to this model name; it means "the base backbone" here.
OPENAI_DEFAULT_MODEL = "whisper-1"
RESCORE_MAX_SECONDS = 30  # an N-best list covers one 30 s window
RESCORE_TOO_LONG = (f"rescoring needs audio of at most {RESCORE_MAX_SECONDS} s (one N-best list); "
                    "send shorter audio or leave `rescore` out")
DEFAULT_RESCORER = "default"  # a tenant's rescorer of this name applies when a request names none
NO_RESCORER = "none"  # `rescore` value that turns the default off
WARMUP_SECONDS = 1.0


@dataclass(frozen=True)
class AdapterRef:
    """The adapter a request names: by the tenant's name for it (``name``: None, the backbone or
    ``whisper-1`` mean the backbone alone) or by its content (``sha256``, as a device knows it)."""

    name: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Resolved:
    """The sha256 of the adapter and of the rescorer a request decodes with (None: none)."""

    adapter: str | None
    rescorer: str | None
    named: bool  # the request named its rescorer (else it is the tenant's default, if any)

    def rescorer_for(self, seconds: float) -> str | None:
        """The rescorer for audio of this length: the default one applies to one N-best window at most;
        a named one for longer audio is an error."""
        if self.rescorer is None or seconds <= RESCORE_MAX_SECONDS:
            return self.rescorer
        if self.named:
            raise InvalidInput(RESCORE_TOO_LONG)
        return None


def _shown(value: str, limit: int = 80) -> str:
    """A client's string for an error message: quoted, and cut short (errors travel in headers)."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + f"... ({len(value)} characters)"


def make_decoder(backbone: Backbone, max_rows: int, speech_check=None, cuda_graphs: bool = True):
    """The decode loop for ``backbone``: our Whisper decoder, or CTC best path. ``speech_check(audio)``:
    a future of whether audio holds speech (the Whisper decoder asks it before fallback passes);
    ``cuda_graphs``: Whisper decoder steps replay CUDA graphs on CUDA."""
    if isinstance(backbone, WhisperBackbone):
        from ..decoding.whisper.decoder import WhisperDecoder

        return WhisperDecoder(backbone, max_rows=max_rows, speech_check=speech_check, cuda_graphs=cuda_graphs)
    from ..decoding.ctc import CTCDecoder

    return CTCDecoder(backbone, max_rows=max_rows)


class Engine:
    """Loads the backbone (possibly in the background) and serves transcriptions through a scheduler."""

    def __init__(self, settings: Settings, backbone: Backbone | None = None):
        """``backbone``: an already loaded one to serve (tests, notebooks); else ``settings.backbone``."""
        self.settings = settings
        self._preloaded = backbone
        self.backbone: Backbone | None = None
        self.spec: BackboneSpec | None = None
        self.limits = AdapterLimits(
            max_rank=settings.adapter_max_rank,
            max_experts=settings.adapter_max_experts,
            max_file_bytes=settings.max_adapter_bytes,
        )
        self.store = open_store(
            settings.adapter_store_dir, settings.adapter_store_url, endpoint_url=settings.adapter_store_endpoint_url,
            max_adapters_per_tenant=settings.max_adapters_per_tenant,
            max_bytes_per_tenant=settings.max_adapter_bytes_per_tenant,
            sweep_interval_s=settings.store_sweep_interval_s,
        )
        # per-tenant request budget, shared by every transport that serves this engine
        self.rate_limiter = RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
        self.auth_limiter = AuthFailureLimiter(settings.auth_failures_per_minute, settings.auth_block_seconds)
        self.streams = StreamSlots(settings.max_streams, settings.max_streams_per_tenant)  # every transport
        self.pool: SlotPool | None = None
        self.rescoring = RescoringService(self.store.read, slots=settings.rescorer_slots, limits=self.limits)
        self.worker: DecodeWorker | None = None
        self.load_error: str | None = None
        self._ready = threading.Event()
        # the decoder's speech checks (Silero, ~0.2 s per window) run here, off the decode thread
        self._checks = ThreadPoolExecutor(1, thread_name_prefix="speech-check")

    # lifecycle -----------------------------------------------------------------------------------
    def load(self) -> None:
        """Load, equip with adapter slots and warm the backbone; then accept requests. Thread-safe."""
        loading = time.perf_counter()
        try:
            backbone = self._preloaded or load_backbone(
                self.settings.backbone, cache_dir=self.settings.backbone_cache_dir, device=self.settings.device,
                quantize=self.settings.quantize, dtype=self.settings.dtype,
            )
            if not bank_layers(backbone.model):  # a preloaded backbone may already carry one
                attach_bank(backbone.model, self.settings.adapter_targets, self.settings.adapter_slots, self.limits)
            self.spec = BackboneSpec.from_model(backbone.name, backbone.model)  # after the bank: its targets
            check = self._speech_check if self.settings.fallback_speech_check else None
            decoder = make_decoder(backbone, self.settings.max_batch_rows, check, self.settings.cuda_graphs)
            start = time.perf_counter()
            self._warm_up(decoder)
            log.info("backbone warmed up in %.2f s", time.perf_counter() - start)
            observability.observe_backbone_load(time.perf_counter() - loading)
        except Exception as exc:
            self.load_error = str(exc)
            log.error("backbone %r failed to load: %s", self.settings.backbone, exc)
            raise
        self.backbone = backbone
        self.pool = SlotPool(backbone.model, self.settings.adapter_slots, self._load_adapter)
        self.pool.on_event = observability.observe_pool_event
        self.worker = DecodeWorker(
            decoder, self.pool,
            max_queue=self.settings.max_queued_requests,
            max_queue_per_tenant=self._queue_share(),
            max_rows_per_tenant=self._row_share(),
            max_admissions=self.settings.max_admissions_per_step,
            rescore=self.rescoring.apply,
            on_step=observability.observe_batch,
            on_done=lambda job: observability.observe_audio(len(job.audio) / SAMPLE_RATE_HZ),
        )
        self.worker.start()
        observability.track_engine(self)
        self._ready.set()

    def _queue_share(self) -> int | None:
        """A tenant's places in the queue: the setting, else half of them; all of them when the server
        has no keys (one open tenant: nobody to share with)."""
        s = self.settings
        if s.max_queued_requests_per_tenant:
            return s.max_queued_requests_per_tenant
        return s.max_queued_requests if s.api_keys is None and s.api_keys_file is None else None

    def _row_share(self) -> int | None:
        """A tenant's rows in the running batch: the setting, else three quarters (the rest stay free for
        other tenants' requests to start at once); all of them when the server has no keys."""
        s = self.settings
        if s.max_batch_rows_per_tenant:
            return s.max_batch_rows_per_tenant
        if s.api_keys is None and s.api_keys_file is None:
            return None
        return max(1, s.max_batch_rows * 3 // 4)

    @staticmethod
    def _warm_up(decoder) -> None:
        """Decode a second of quiet noise once: the first forward passes are slow (allocation, kernels)."""
        noise = np.random.default_rng(0).normal(0, 0.01, int(WARMUP_SECONDS * SAMPLE_RATE_HZ)).astype(np.float32)
        request = decoder.start(noise, DecodingOptions(max_new_tokens=8, compression_ratio_threshold=None,
                                                       logprob_threshold=None))
        while not request.done:
            decoder.admit(decoder.waiting())
            decoder.step()

    def _speech_check(self, audio: np.ndarray) -> Future:
        return self._checks.submit(has_speech, audio)

    def close(self, timeout: float | None = None) -> None:
        self.store.close()
        if self.worker:
            self.worker.stop(timeout)
        self._checks.shutdown(wait=False, cancel_futures=True)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    @property
    def word_timestamps_available(self) -> bool:
        """Whether the backbone aligns words (a Whisper backbone with alignment heads)."""
        decoder = self.worker.decoder if self.worker else None
        return bool(getattr(getattr(decoder, "vocab", None), "alignment_heads", ()))

    @property
    def backbone_name(self) -> str:
        return self.backbone.name if self.backbone else self.settings.backbone

    # adapters ------------------------------------------------------------------------------------
    def _require_ready(self) -> None:
        if not self.ready:
            raise NotReady(self.load_error or "the backbone is still loading; retry shortly")

    def validate_adapter(self, data: bytes) -> Adapter:
        """Parse and check an adapter file against this backbone (raises InvalidAdapter)."""
        self._require_ready()
        return load_adapter(data, expected_backbone=self.spec, limits=self.limits)

    def validate_kind(self, data: bytes) -> str:
        """Check an ASR adapter or rescorer file (raises InvalidAdapter); returns its kind."""
        if is_rescorer_file(data, self.limits):
            self.rescoring.validate(data)
            return RESCORER_KIND
        return self.validate_adapter(data).kind

    def put_adapter(self, tenant: str, name: str, data: bytes, expected_sha256: str | None = None) -> AdapterRecord:
        return self.store.put(tenant, name, data, self.validate_kind, expected_sha256)

    def _load_adapter(self, sha256: str) -> Adapter:
        return load_adapter(self.store.read(sha256), expected_backbone=self.spec, limits=self.limits)

    # requests ------------------------------------------------------------------------------------
    def model_names(self, tenant: str | None = None) -> list[str]:
        names = [self.backbone_name, OPENAI_DEFAULT_MODEL]
        if tenant is not None:
            names += [r.name for r in self.store.list(tenant) if r.kind != RESCORER_KIND]
        return names

    def resolve_model(self, tenant: str, model: str | None) -> str | None:
        """The sha256 of the adapter ``model`` names (None for the backbone); NotFound otherwise."""
        if model in (None, "", self.backbone_name, OPENAI_DEFAULT_MODEL):
            return None
        try:
            record = self.store.get(tenant, model)
        except (NotFound, InvalidInput):  # an invalid name is an unknown model too
            raise NotFound(
                f"model {_shown(model)} does not exist; available: {', '.join(self.model_names(tenant))}"
            ) from None
        if record.kind == RESCORER_KIND:
            raise InvalidInput(f"{model!r} is an N-best rescorer, not a model: pass it as `rescore`")
        return record.sha256

    def resolve_rescorer(self, tenant: str, name: str | None) -> str | None:
        """The sha256 of the tenant's rescorer ``name`` (None when empty); NotFound otherwise."""
        if not name or name == NO_RESCORER:
            return None
        try:
            record = self.store.get(tenant, name)
        except (NotFound, InvalidInput):
            record = None
        if record is None or record.kind != RESCORER_KIND:
            raise NotFound(f"rescorer {name!r} does not exist; upload one to /v1/adapters "
                           "(a file from `splitasr rescorer train`)")
        return record.sha256

    def rescoring_options(self, options: DecodingOptions, rescorer: str | None) -> DecodingOptions:
        """Options that produce the N-best list a rescorer needs."""
        if rescorer is None or options.nbest > 1:
            return options
        return replace(options, nbest=self.settings.rescorer_nbest)

    def resolve(self, tenant: str, adapter: AdapterRef | None, rescore: str | None) -> Resolved:
        """What a request of ``tenant`` decodes with (NotFound for a name the tenant does not have).

        ``rescore``: one of the tenant's rescorers by name, ``"none"`` for none, or None for the
        tenant's rescorer named ``default``, if any (which then applies to short audio only).
        """
        self._require_ready()
        sha256 = self._adapter_sha256(tenant, adapter or AdapterRef())
        if rescore is None:
            return Resolved(sha256, self.default_rescorer(tenant), named=False)
        return Resolved(sha256, self.resolve_rescorer(tenant, rescore), named=True)

    def _adapter_sha256(self, tenant: str, ref: AdapterRef) -> str | None:
        if ref.sha256 is None:
            return self.resolve_model(tenant, ref.name)
        record = self.store.find_by_hash(tenant, ref.sha256)
        if record is None:
            raise NotFound(f"no adapter with sha256 {ref.sha256.lower()}; enroll it first "
                           "(upload it: Adapters.Upload, or POST /v1/adapters)")
        if record.kind == RESCORER_KIND:
            raise InvalidInput(f"{ref.sha256.lower()} is an N-best rescorer, not a model: pass it as `rescore`")
        return record.sha256

    async def transcribe(self, audio: bytes | np.ndarray, options: DecodingOptions, *, tenant: str,
                         adapter: AdapterRef | None = None, rescore: str | None = None,
                         vad: VadFilterOptions | None = None,
                         decode: Callable[[bytes], np.ndarray] | None = None) -> Transcription:
        """Transcribe one request: the one entry point of every transport.

        ``audio``: 16 kHz samples, or the bytes of an audio file (``decode(data)`` turns other bytes,
        such as a stream's raw PCM, into samples). ``adapter`` and ``rescore``: see :meth:`resolve`,
        done before the audio is decoded; ``vad``: decode only the speech (VAD filter).
        """
        resolved = self.resolve(tenant, adapter, rescore)
        if not isinstance(audio, np.ndarray):
            audio = await asyncio.to_thread(decode or self.decode_file, bytes(audio))
        rescorer = resolved.rescorer_for(len(audio) / SAMPLE_RATE_HZ)
        if vad is not None:
            return await transcribe_speech(self.transcribe_audio, audio, options, vad, resolved.adapter, rescorer,
                                           tenant=tenant)
        return await self.transcribe_audio(audio, options, resolved.adapter, rescorer, tenant=tenant)

    def decode_file(self, data: bytes) -> np.ndarray:
        """An uploaded audio file as 16 kHz mono float32, within the server's length limit (blocks)."""
        return decode_audio(data, max_seconds=self.settings.max_audio_seconds)

    def _decode_time_limit(self, seconds: float) -> float | None:
        """How long a request for ``seconds`` of audio may decode (None: no limit)."""
        rtf = self.settings.decode_time_limit_rtf
        return max(self.settings.decode_time_limit_min_s, rtf * seconds) if rtf else None

    def default_rescorer(self, tenant: str) -> str | None:
        """The sha256 of the tenant's rescorer named ``default``, if it has one."""
        try:
            record = self.store.get(tenant, DEFAULT_RESCORER)
        except NotFound:
            return None
        return record.sha256 if record.kind == RESCORER_KIND else None

    async def transcribe_audio(self, audio: np.ndarray, options: DecodingOptions,
                               adapter_sha256: str | None = None, rescorer_sha256: str | None = None, *,
                               priority: int = PRIORITY_FILE, tenant: str = "",
                               key: Hashable | None = None,
                               listener: Callable[[str], None] | None = None) -> Transcription:
        """Decode 16 kHz audio with the adapter and the rescorer of these sha256 (None: none), as resolved.

        ``priority``: :data:`~splitasr.engine.worker.PRIORITY_FINAL` / ``_INTERIM`` for streams, files
        otherwise; ``tenant``: whose turn it is in the queue; ``key``: a newer decode with the same key
        (a stream's next interim) supersedes this one; ``listener(text)``: called on the decode
        worker's thread with each piece of new stable text as it is decoded (the pieces concatenate to
        the result's text; see :class:`~splitasr.engine.file_stream.FileTranscript`). Cancelling the
        awaiting task withdraws it.
        """
        self._require_ready()
        assert self.worker is not None
        if rescorer_sha256 and len(audio) > RESCORE_MAX_SECONDS * SAMPLE_RATE_HZ:
            raise InvalidInput(RESCORE_TOO_LONG)
        if self.settings.audio_ctx_seconds and options.audio_ctx_seconds is None:
            options = replace(options, audio_ctx_seconds=self.settings.audio_ctx_seconds)
        job = Job(audio, self.rescoring_options(options, rescorer_sha256), adapter_sha256, rescorer_sha256,
                  priority, tenant, key, time_limit_s=self._decode_time_limit(len(audio) / SAMPLE_RATE_HZ),
                  listener=listener)
        # a DELETE meanwhile keeps the blobs until this row is done
        with self.store.pinned(adapter_sha256, rescorer_sha256):
            future = self.worker.submit(job)
            return await asyncio.wrap_future(future)
