"""Stop work for a client that went away.

Uvicorn does not cancel a request handler when its client disconnects, so a transcription whose
client hung up would decode to the end. :func:`unless_disconnected` awaits the work next to a watcher
that reads the connection's next ASGI message (after the body has been read, the only one left is
``http.disconnect``); when the client leaves first, the work is cancelled, which withdraws the request
from the decode worker (queued: it leaves the queue; decoding: its rows leave the batch at the next
step).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client closed the connection before its response was ready."""


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """The result of ``work``, or :class:`ClientDisconnected` (``work`` cancelled) if the client leaves."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.create_task(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    raise ClientDisconnected
