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
from collections.abc import Hashable
from typing import Any

import numpy as np
from ray import serve

from ..adapters import Adapter
from ..config import Settings
from ..decoding import DecodingOptions, Transcription
from ..engine.engine import Engine
from ..engine.worker import PRIORITY_FILE
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


@serve.deployment(name="SplitASRReplica")
class Replica:
    """One engine; ``transcribe`` decodes with the adapter named by the request's multiplexed model id."""

    def __init__(self, settings: dict[str, Any]):
        self.settings = Settings(_env_file=None, **settings)
        self.engine = ReplicaEngine(self.settings)
        self.engine.load()
        self.tag = serve.get_replica_context().replica_tag
        self.cold_loads = 0

        async def stage(sha256: str) -> StagedAdapter:
            adapter = await asyncio.to_thread(self.engine.read_adapter, sha256)
            self.cold_loads += 1
            return StagedAdapter(self.engine, sha256, adapter)

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
            result = await self.engine.transcribe_audio(audio, options, adapter, rescorer, priority=priority,
                                                        tenant=tenant, key=key)
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
            "slots": self.settings.adapter_slots,
        }

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close(timeout=5)
