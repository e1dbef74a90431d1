"""Concurrent ``StreamingRecognize`` calls: a limit for the server and a smaller one per tenant.

A stream holds server memory and a share of the decode worker for as long as it lasts, so one tenant
opening many (even silent) streams must not use up the server's limit for everyone: each tenant may
hold at most ``per_tenant`` of the ``total``. Over either limit a new stream is refused with
:class:`~splitasr.errors.Overloaded` (RESOURCE_EXHAUSTED) naming the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator

from ...errors import Overloaded

# A refused client is usually still sending its first messages. Ending the call while it writes can
# make grpc's client report INTERNAL "Internal error from Core" instead of the status (a client-side
# race in grpc core), so the server first reads what the client sends, for at most this long.
REFUSAL_DRAIN_S = 1.0


class StreamSlots:
    """Counts streams in progress, in all and per tenant (used from the event loop thread only)."""

    def __init__(self, total: int, per_tenant: int):
        self.total = total
        self.per_tenant = per_tenant
        self.by_tenant: Counter[str] = Counter()

    @property
    def active(self) -> int:
        return sum(self.by_tenant.values())

    @contextlib.asynccontextmanager
    async def hold(self, tenant: str, requests: AsyncIterator) -> AsyncIterator[None]:
        """One slot for ``tenant`` for the ``async with`` block, or :class:`Overloaded` (after
        :func:`drain` of the refused call's ``requests``)."""
        if self.by_tenant[tenant] >= self.per_tenant:
            refusal = (f"this tenant already has {self.by_tenant[tenant]} streams open, its limit of "
                       f"{self.per_tenant} (SPLITASR_MAX_STREAMS_PER_TENANT); close one first")
        elif self.active >= self.total:
            refusal = f"the server is at its limit of {self.total} streams; retry later"
        else:
            refusal = None
        if refusal is not None:
            await drain(requests)
            raise Overloaded(refusal)
        self.by_tenant[tenant] += 1
        try:
            yield
        finally:
            self.by_tenant[tenant] -= 1
            if self.by_tenant[tenant] <= 0:
                del self.by_tenant[tenant]


async def drain(requests: AsyncIterator, seconds: float = REFUSAL_DRAIN_S) -> None:
    """Read and drop ``requests`` until the client half-closes or ``seconds`` pass."""

    async def read_all() -> None:
        async for _ in requests:
            pass

    with contextlib.suppress(Exception, asyncio.TimeoutError):
        await asyncio.wait_for(read_all(), seconds)
