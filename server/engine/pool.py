"""SlotPool: which adapters are resident in the backbone's AdapterBank slots, with LRU eviction.

Used only from the scheduler's worker thread (the one thread that runs the model), so loading an
adapter into a slot never races a forward pass. Adapters are keyed by sha256, so two tenants who
upload the same bytes share one slot.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from ..adapters import Adapter, load_into_slot

log = logging.getLogger(__name__)


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
        self.stats = PoolStats()
        self.on_event: Callable[[str, float], None] | None = None  # ("hit"|"miss"|"eviction", seconds)

    @property
    def occupancy(self) -> int:
        return len(self._resident)

    def resident(self, sha256: str) -> bool:
        return sha256 in self._resident

    def acquire(self, adapters: Sequence[str | None]) -> list[int]:
        """Slot of each row's adapter (0 for none), loading missing ones; at most ``capacity`` distinct."""
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
            victim = next(s for s in self._resident if s not in keep)  # least recently used idle slot
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
