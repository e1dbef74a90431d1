"""Live streams, whichever transport carries them (gRPC StreamingRecognize, Realtime sessions).

Every stream holds server memory and a share of the decode worker for as long as it lasts, so all
transports share one budget (``SPLITASR_MAX_STREAMS``), and one tenant opening many (even silent)
streams must not use it up for everyone: each tenant may hold at most ``per_tenant`` of them
(``SPLITASR_MAX_STREAMS_PER_TENANT``). Over either limit a new stream is refused with
:class:`~splitasr.errors.Overloaded` naming the limit: RESOURCE_EXHAUSTED (429) for the tenant's
limit, UNAVAILABLE with a retry delay (429) when the whole server is full.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import Overloaded, ServerBusy


class StreamSlots:
    """Counts live streams in all and per tenant (thread-safe)."""

    def __init__(self, limit: int, per_tenant: int | None = None):
        self.limit = limit
        self.per_tenant = per_tenant or limit
        self.by_tenant: Counter[str] = Counter()
        self._lock = threading.Lock()

    @property
    def active(self) -> int:
        return sum(self.by_tenant.values())

    def acquire(self, tenant: str) -> None:
        """Take one slot for ``tenant``, or raise :class:`Overloaded` naming the limit."""
        with self._lock:
            held = self.by_tenant[tenant]
            if held >= self.per_tenant:
                raise Overloaded(f"this tenant already has {held} streams open, its limit of "
                                 f"{self.per_tenant} (SPLITASR_MAX_STREAMS_PER_TENANT); close one first")
            if self.active >= self.limit:
                raise ServerBusy(f"the server is at its limit of {self.limit} streams; retry later")
            self.by_tenant[tenant] += 1

    def release(self, tenant: str) -> None:
        with self._lock:
            self.by_tenant[tenant] -= 1
            if self.by_tenant[tenant] <= 0:
                del self.by_tenant[tenant]

    @contextmanager
    def hold(self, tenant: str) -> Iterator[None]:
        """One slot for ``tenant`` for the ``with`` block."""
        self.acquire(tenant)
        try:
            yield
        finally:
            self.release(tenant)
