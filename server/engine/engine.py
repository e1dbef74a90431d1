"""The serving engine: one frozen backbone, an adapter store, a slot pool and a batching scheduler.

Transports (REST, gRPC) call only this. Every request names a tenant; ``model`` is the backbone
(or ``whisper-1``) or one of that tenant's adapters. Rows with different adapters share a batch.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np

from .. import observability
from ..adapters import Adapter, AdapterLimits, BackboneSpec, attach_bank, bank_layers, load_adapter
from ..audio import SAMPLE_RATE_HZ, decode_audio
from ..backbones.loader import Backbone, load_backbone
from ..config import Settings
from ..errors import InvalidInput, NotFound, NotReady
from ..tenants import RateLimiter
from .decoding import DecodingOptions, Transcription, transcribe
from .pool import SlotPool
from .scheduler import Scheduler
from .store import AdapterRecord, AdapterStore

log = logging.getLogger(__name__)

# OpenAI clients default to this model name; it means "the base backbone" here.
OPENAI_DEFAULT_MODEL = "whisper-1"


@dataclass(frozen=True)
class Row:
    audio: np.ndarray
    adapter: str | None  # sha256, None = plain backbone


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
        self.store = AdapterStore(
            settings.adapter_store_dir,
            max_adapters_per_tenant=settings.max_adapters_per_tenant,
            max_bytes_per_tenant=settings.max_adapter_bytes_per_tenant,
        )
        # per-tenant request budget, shared by every transport that serves this engine
        self.rate_limiter = RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
        self.pool: SlotPool | None = None
        self.scheduler: Scheduler | None = None
        self.load_error: str | None = None
        self._ready = threading.Event()

    # lifecycle -----------------------------------------------------------------------------------
    def load(self) -> None:
        """Load, equip with adapter slots and warm the backbone; then accept requests. Thread-safe."""
        loading = time.perf_counter()
        try:
            backbone = self._preloaded or load_backbone(
                self.settings.backbone, cache_dir=self.settings.backbone_cache_dir, device=self.settings.device,
                quantize=self.settings.quantize,
            )
            self.spec = BackboneSpec.from_model(backbone.name, backbone.model)
            if not bank_layers(backbone.model):  # a preloaded backbone may already carry one
                attach_bank(backbone.model, self.settings.adapter_targets, self.settings.adapter_slots, self.limits)
            start = time.perf_counter()
            transcribe(backbone, [np.zeros(SAMPLE_RATE_HZ, dtype=np.float32)])  # warm-up: first call is slow
            log.info("backbone warmed up in %.2f s", time.perf_counter() - start)
            observability.observe_backbone_load(time.perf_counter() - loading)
        except Exception as exc:
            self.load_error = str(exc)
            log.error("backbone %r failed to load: %s", self.settings.backbone, exc)
            raise
        self.backbone = backbone
        self.pool = SlotPool(backbone.model, self.settings.adapter_slots, self._load_adapter)
        self.pool.on_event = observability.observe_pool_event
        self.scheduler = Scheduler(
            self._run_batch,
            max_batch_size=self.settings.max_batch_size,
            max_wait_ms=self.settings.max_batch_wait_ms,
            max_queue=self.settings.max_queued_requests,
            on_batch=observability.observe_batch,
        )
        self.scheduler.start()
        observability.track_engine(self)
        self._ready.set()

    def close(self, timeout: float | None = None) -> None:
        if self.scheduler:
            self.scheduler.stop(timeout)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

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

    def put_adapter(self, tenant: str, name: str, data: bytes, expected_sha256: str | None = None) -> AdapterRecord:
        return self.store.put(tenant, name, data, lambda b: self.validate_adapter(b).kind, expected_sha256)

    def _load_adapter(self, sha256: str) -> Adapter:
        return load_adapter(self.store.read(sha256), expected_backbone=self.spec, limits=self.limits)

    # requests ------------------------------------------------------------------------------------
    def model_names(self, tenant: str | None = None) -> list[str]:
        names = [self.backbone_name, OPENAI_DEFAULT_MODEL]
        if tenant is not None:
            names += [r.name for r in self.store.list(tenant)]
        return names

    def resolve_model(self, tenant: str, model: str | None) -> str | None:
        """The sha256 of the adapter ``model`` names (None for the backbone); NotFound otherwise."""
        if model in (None, "", self.backbone_name, OPENAI_DEFAULT_MODEL):
            return None
        try:
            return self.store.get(tenant, model).sha256
        except (NotFound, InvalidInput):  # an invalid name is an unknown model too
            raise NotFound(
                f"model {model!r} does not exist; available: {', '.join(self.model_names(tenant))}"
            ) from None

    async def transcribe(self, data: bytes, options: DecodingOptions, *, tenant: str,
                         model: str | None = None) -> Transcription:
        self._require_ready()
        adapter = self.resolve_model(tenant, model)
        audio = await asyncio.to_thread(decode_audio, data, max_seconds=self.settings.max_audio_seconds)
        return await self.transcribe_audio(audio, options, adapter)

    async def transcribe_audio(self, audio: np.ndarray, options: DecodingOptions,
                               adapter: str | None = None) -> Transcription:
        self._require_ready()
        assert self.scheduler is not None
        return await self.scheduler.run(Row(audio, adapter), options)

    def _run_batch(self, rows: list[Row], options: Hashable) -> list[Transcription]:
        assert self.backbone is not None and self.pool is not None
        assert isinstance(options, DecodingOptions)
        results: list[Transcription] = []
        # a batch never needs more distinct adapters than the pool has slots
        start = 0
        while start < len(rows):
            end, distinct = start, set()
            while end < len(rows) and len(distinct | {rows[end].adapter} - {None}) <= self.pool.capacity:
                distinct |= {rows[end].adapter} - {None}
                end += 1
            chunk = rows[start:end]
            slots = self.pool.acquire([r.adapter for r in chunk])
            results += transcribe(self.backbone, [r.audio for r in chunk], options, slots)
            observability.observe_audio(sum(r.audio.size for r in chunk) / SAMPLE_RATE_HZ)
            start = end
        return results
