"""A ``StreamingRecognize`` call's place in the engine's stream limits, refused so clients read it.

A refused client is usually still sending its first messages. Ending the call while it writes can
make grpc's client report INTERNAL "Internal error from Core" instead of the status (a client-side
race in grpc core), so the server first reads what the client sends, for at most
:data:`REFUSAL_DRAIN_S`, then answers RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from ...engine.streams import StreamSlots
from ...errors import Overloaded

REFUSAL_DRAIN_S = 1.0


@contextlib.asynccontextmanager
async def hold_stream(slots: StreamSlots, tenant: str, requests: AsyncIterator) -> AsyncIterator[None]:
    """One slot for ``tenant`` for the ``async with`` block, or :class:`Overloaded` (after
    :func:`drain` of the refused call's ``requests``)."""
    try:
        slots.acquire(tenant)
    except Overloaded:
        await drain(requests)
        raise
    try:
        yield
    finally:
        slots.release(tenant)


async def drain(requests: AsyncIterator, seconds: float = REFUSAL_DRAIN_S) -> None:
    """Read and drop ``requests`` until the client half-closes or ``seconds`` pass."""

    async def read_all() -> None:
        async for _ in requests:
            pass

    with contextlib.suppress(Exception, asyncio.TimeoutError):
        await asyncio.wait_for(read_all(), seconds)
