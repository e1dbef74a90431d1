"""The replica deployment: one :class:`~splitasr.engine.engine.Engine` (backbone, slot pool, decode
worker with continuous batching) per Ray Serve replica.

Requests arrive from the ingress with ``multiplexed_model_id`` = the adapter's sha256. The adapter
is staged through ``@serve.multiplexed`` (``max_num_models_per_replica`` = the engine's adapter
slots): Serve then routes later requests for that adapter to this replica, and the staged, already
validated adapter is what the slot pool copies into a slot. Requests with different adapters still
share one forward pass (no ``@serve.batch``, which would split batches by model id).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Hashable, Iterable
from dataclasses import asdict
from typing import Any

import numpy as np
from ray import serve
from ray.serve import metrics as serve_metrics

from ..adapters import Adapter
from ..config import Settings
from ..decoding import DecodingOptions, Transcription
from ..engine.engine import Engine
from ..engine.worker import PRIORITY_FILE, StepShape
from ..errors import SplitASRError

log = logging.getLogger(__name__)


class ReplicaEngine(Engine):
    """An engine whose slot pool takes adapters staged by the multiplexed loader (parsed once)."""

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self.staged: dict[str, Adapter] = {}  # sha256 -> validated adapter, while Serve counts it loaded

    def read_adapter(self, sha256: str) -> Adapter:
        """Read and validate the adapter from the shared store (a cold load)."""
        return super()._load_adapter(sha256)

    def _load_adapter(self, sha256: str) -> Adapter:
        staged = self.staged.get(sha256)
        return staged if staged is not None else self.read_adapter(sha256)


class StagedAdapter:
    """What the multiplexed loader returns: Serve calls ``__del__`` when it unloads the adapter (LRU)."""

    def __init__(self, engine: ReplicaEngine, sha256: str, adapter: Adapter):
        self.engine, self.sha256, self.adapter = engine, sha256, adapter
        engine.staged[sha256] = adapter

    def __del__(self) -> None:
        # Serve calls this on unload and the garbage collector again later: drop only our own entry
        if self.engine.staged.get(self.sha256) is self.adapter:
            del self.engine.staged[self.sha256]


class ResidentAdapters:
    """A gauge in the shape of vLLM's ``vllm:lora_requests_info``, so LoRA-aware gateways can read it:
    value = when it was set (Unix time), labels ``max_lora`` (slots), ``running_lora_adapters`` (the
    sha256 of the adapters staged on this replica, comma-separated) and ``waiting_lora_adapters``
    (those requests are waiting to load). As with vLLM, the series with the latest value is current.
    Serve adds the deployment and replica labels; Ray exports it as ``ray_splitasr_lora_requests_info``."""

    def __init__(self, slots: int):
        self.slots = slots
        self.loading: set[str] = set()
        self.gauge = serve_metrics.Gauge(
            "splitasr_lora_requests_info", description="Adapters staged on this replica (vLLM lora_requests_info shape).",
            tag_keys=("max_lora", "running_lora_adapters", "waiting_lora_adapters"))

    def report(self, staged: Iterable[str]) -> None:
        self.gauge.set(time.time(), tags={"max_lora": str(self.slots),
                                          "running_lora_adapters": ",".join(sorted(staged)),
                                          "waiting_lora_adapters": ",".join(sorted(self.loading))})


ROWS_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]


class ReplicaMetrics:
    """This replica's adapter pool, queue and batches as Ray metrics. Serve adds the ``deployment``,
    ``replica`` and ``application`` labels, so each series is one replica's; Ray exports them from
    every node's metrics agent with a ``ray_`` prefix (counters as ``..._total``)."""

    def __init__(self):
        def counter(name: str, description: str) -> serve_metrics.Counter:
            return serve_metrics.Counter(name, description=description)

        self.pool = {
            "hit": counter("splitasr_replica_adapter_hits", "Requests whose adapter was already in a slot."),
            "miss": counter("splitasr_replica_adapter_misses", "Requests that loaded their adapter into a slot."),
            "eviction": counter("splitasr_replica_adapter_evictions", "Adapters evicted from a slot (LRU)."),
        }
        self.queued = serve_metrics.Gauge(
            "splitasr_replica_queued_requests", description="Requests waiting for a place in this replica's batch.")
        self.decoding = serve_metrics.Gauge(
            "splitasr_replica_decoding_requests",
            description="Requests being decoded (started in this replica's running batch).")
        self.rows = serve_metrics.Histogram(
            "splitasr_replica_batch_rows", description="Rows in one forward pass (decoder step).",
            boundaries=ROWS_BUCKETS)
        self.adapters = serve_metrics.Histogram(
            "splitasr_replica_batch_adapters", description="Distinct adapters in one forward pass (decoder step).",
            boundaries=ROWS_BUCKETS)

    def watch(self, engine: Engine) -> None:
        """Count ``engine``'s pool events and steps (after :meth:`Engine.load`)."""
        pool, worker = engine.pool, engine.worker
        inner = pool.on_event

        def on_pool_event(event: str, seconds: float) -> None:
            if inner:
                inner(event, seconds)
            if event in self.pool:
                self.pool[event].inc()

        pool.on_event = on_pool_event

        def on_step(step: StepShape) -> None:
            self.rows.observe(step.rows)
            self.adapters.observe(step.adapters)
            self.report_queue(engine)

        worker.step_listeners.append(on_step)
        self.report_queue(engine)

    def report_queue(self, engine: Engine) -> None:
        worker = engine.worker
        queued = worker.queued
        self.queued.set(queued)
        self.decoding.set(worker.pending - queued)


@serve.deployment(name="SplitASRReplica")
class Replica:
    """One engine; ``transcribe`` decodes with the adapter named by the request's multiplexed model id."""

    def __init__(self, settings: dict[str, Any]):
        self.settings = Settings(_env_file=None, **settings)
        self.engine = ReplicaEngine(self.settings)
        self.engine.load()
        self.tag = serve.get_replica_context().replica_tag
        self.cold_loads = 0

        self.resident = ResidentAdapters(self.settings.adapter_slots)
        self.resident.report(())
        self.metrics = ReplicaMetrics()
        self.metrics.watch(self.engine)

        async def stage(sha256: str) -> StagedAdapter:
            self.resident.loading.add(sha256)
            self.resident.report(self.engine.staged)
            try:
                adapter = await asyncio.to_thread(self.engine.read_adapter, sha256)
            finally:
                self.resident.loading.discard(sha256)
            self.cold_loads += 1
            staged = StagedAdapter(self.engine, sha256, adapter)
            self.resident.report(self.engine.staged)
            return staged

        # wired at run time: the cache size is the engine's slot count, a setting
        self.get_adapter = serve.multiplexed(max_num_models_per_replica=self.settings.adapter_slots)(stage)
        log.info("replica %s ready: %d adapter slots", self.tag, self.settings.adapter_slots)

    async def transcribe(self, audio: np.ndarray, options: DecodingOptions, adapter: str | None,
                         rescorer: str | None, priority: int = PRIORITY_FILE, tenant: str = "",
                         key: Hashable | None = None) -> tuple[Transcription | SplitASRError, str]:
        """Decode on this replica; returns (the transcription or the client error, this replica's id).

        Client errors travel as values so that the ingress re-raises them unchanged (Ray would wrap
        a raised one in its own error type and message)."""
        try:
            if adapter:
                if serve.get_multiplexed_model_id() != adapter:
                    raise RuntimeError("the request's multiplexed model id is not its adapter")
                await self.get_adapter(adapter)
            try:  # every decoder step reports the queue too
                result = await self.engine.transcribe_audio(audio, options, adapter, rescorer, priority=priority,
                                                            tenant=tenant, key=key)
            finally:
                self.metrics.report_queue(self.engine)
            return result, self.tag
        except SplitASRError as exc:
            return exc, self.tag

    async def lookup(self, tenant: str, name: str) -> tuple[str, str | None]:
        """(this replica's id, the sha256 that ``tenant``'s ``name`` has in this replica's view of the
        shared store, or None): shows that an upload through the ingress reached every replica."""
        try:
            return self.tag, self.engine.store.get(tenant, name).sha256
        except SplitASRError:
            return self.tag, None

    async def info(self) -> dict[str, Any]:
        """This replica's id, resident adapters and pool counters (the per-replica view)."""
        pool = self.engine.pool
        stats = pool.stats if pool else None
        return {
            "replica": self.tag,
            "staged_adapters": sorted(self.engine.staged),
            "resident_adapters": sorted(pool.resident_adapters()) if pool else [],
            "cold_loads": self.cold_loads,
            "pool": {"hits": stats.hits, "misses": stats.misses, "evictions": stats.evictions} if stats else {},
            "worker": asdict(self.engine.worker.stats) if self.engine.worker else {},
            "slots": self.settings.adapter_slots,
        }

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close(timeout=5)
