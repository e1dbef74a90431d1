"""One limit on live streams, whichever transport carries them (gRPC StreamingRecognize, Realtime)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import Overloaded


class StreamSlots:
    """Counts live streams against ``limit`` (``SPLITASR_MAX_STREAMS``); every stream decodes
    continuously, so all transports share one budget."""

    def __init__(self, limit: int):
        self.limit = limit
        self.active = 0
        self._lock = threading.Lock()

    @contextmanager
    def hold(self) -> Iterator[None]:
        """One slot for the block; :class:`Overloaded` when all are taken."""
        with self._lock:
            if self.active >= self.limit:
                raise Overloaded(f"the server is at its limit of {self.limit} streams; retry later")
            self.active += 1
        try:
            yield
        finally:
            with self._lock:
                self.active -= 1
