"""SlotPool: which adapters are resident in the backbone's AdapterBank slots, with LRU eviction.

Used only from the decode worker's thread (the one thread that runs the model), so loading an
adapter into a slot never races a forward pass. Adapters are keyed by sha256, so two tenants who
upload the same bytes share one slot. A request pins its adapter's slot for its whole life (its rows
read the slot at every decoder step); pinned slots are never evicted, so when every slot is pinned a
new adapter waits (:class:`NoFreeSlot`) until a request finishes.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from . import Adapter, load_into_slot

log = logging.getLogger(__name__)


class NoFreeSlot(Exception):
    """Every slot holds an adapter that a running request uses; try again when one finishes."""


@dataclass
class PoolStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    load_seconds_total: float = 0.0


class SlotPool:
    def __init__(self, model: nn.Module, capacity: int, loader: Callable[[str], Adapter]):
        """``capacity`` real slots (1..capacity); ``loader(sha256)`` returns the validated adapter."""
        self.model = model
        self.capacity = capacity
        self._loader = loader
        self._resident: OrderedDict[str, int] = OrderedDict()  # sha256 -> slot, least recent first
        self._free = list(range(capacity, 0, -1))
        self._pins: Counter[str] = Counter()
        self.stats = PoolStats()
        self.on_event: Callable[[str, float], None] | None = None  # ("hit"|"miss"|"eviction", seconds)

    @property
    def occupancy(self) -> int:
        return len(self._resident)

    def resident(self, sha256: str) -> bool:
        return sha256 in self._resident

    def resident_adapters(self) -> list[str]:
        """The sha256 of every resident adapter, least recently used first (safe from other threads)."""
        while True:
            try:
                return list(self._resident)
            except RuntimeError:  # the worker thread changed it meanwhile: read again
                continue

    def pin(self, sha256: str | None) -> int:
        """The slot of ``sha256`` (0 for None), loaded if needed and kept until :meth:`unpin`."""
        if not sha256:
            return 0
        slot = self.acquire([sha256])[0]
        self._pins[sha256] += 1
        return slot

    def unpin(self, sha256: str | None) -> None:
        if sha256:
            self._pins[sha256] -= 1
            if self._pins[sha256] <= 0:
                del self._pins[sha256]

    def acquire(self, adapters: Sequence[str | None]) -> list[int]:
        """Slot of each row's adapter (0 for none), loading missing ones; at most ``capacity`` distinct.

        Raises :class:`NoFreeSlot` when a missing adapter finds only pinned slots."""
        wanted = list(dict.fromkeys(a for a in adapters if a))
        if len(wanted) > self.capacity:
            raise ValueError(f"{len(wanted)} distinct adapters in one batch; the pool holds {self.capacity}")
        for sha in wanted:
            if sha in self._resident:
                self._resident.move_to_end(sha)
                self.stats.hits += 1
                self._emit("hit", 0.0)
            else:
                self._load(sha, keep=set(wanted))
        return [self._resident[a] if a else 0 for a in adapters]

    def _load(self, sha: str, keep: set[str]) -> None:
        start = time.perf_counter()
        adapter = self._loader(sha)  # may raise InvalidAdapter: nothing changed yet
        if self._free:
            slot = self._free.pop()
        else:
            victim = next((s for s in self._resident if s not in keep and s not in self._pins), None)
            if victim is None:
                raise NoFreeSlot(f"all {self.capacity} adapter slots are in use by running requests")
            slot = self._resident.pop(victim)
            self.stats.evictions += 1
            self._emit("eviction", 0.0)
        try:
            load_into_slot(self.model, slot, adapter)
        except Exception:
            self._free.append(slot)
            raise
        self._resident[sha] = slot
        elapsed = time.perf_counter() - start
        self.stats.misses += 1
        self.stats.load_seconds_total += elapsed
        self._emit("miss", elapsed)

    def _emit(self, event: str, seconds: float) -> None:
        if self.on_event:
            self.on_event(event, seconds)
