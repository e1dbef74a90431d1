"""Dynamic batching: requests queue, a single worker thread forms batches by size or max wait.

One worker owns the model, so model work never runs on the event loop and never contends with
itself for the CPU. Requests are grouped by their decoding options (a batch shares one beam size,
task, ...). If a batch fails, its requests are retried one by one so that one bad request never
fails its neighbours.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ..errors import NotReady, Overloaded

log = logging.getLogger(__name__)

_STOP = object()


@dataclass
class Job:
    payload: Any  # what the batch function receives for this row (audio, adapter slot ...)
    group: Hashable  # rows batch together only when their groups are equal
    future: Future = field(default_factory=Future)
    enqueued_at: float = field(default_factory=time.perf_counter)


BatchFn = Callable[[list[Any], Hashable], list[Any]]


class Scheduler:
    """Runs ``batch_fn(payloads, group) -> results`` on batches of queued jobs in one worker thread."""

    def __init__(
        self,
        batch_fn: BatchFn,
        *,
        max_batch_size: int = 8,
        max_wait_ms: float = 10.0,
        max_queue: int = 64,
        name: str = "scheduler",
        on_batch: Callable[[int, float], None] | None = None,
    ):
        self._batch_fn = batch_fn
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue = max_queue
        self._queue: queue.Queue = queue.Queue()
        self._pending = 0  # queued + running
        self._lock = threading.Lock()
        self._on_batch = on_batch
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._accepting = False

    def start(self) -> None:
        self._accepting = True
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, let queued jobs finish, then end the worker."""
        self._accepting = False
        self._queue.put(_STOP)
        self._thread.join(timeout)

    @property
    def pending(self) -> int:
        return self._pending

    def submit(self, payload: Any, group: Hashable = None) -> Future:
        if not self._accepting:
            raise NotReady("the server is not accepting requests (starting or shutting down)")
        with self._lock:
            if self._pending >= self.max_queue:
                raise Overloaded(
                    f"server is at capacity ({self._pending} requests in progress or queued); retry later"
                )
            self._pending += 1
        job = Job(payload, group)
        job.future.add_done_callback(self._release)
        self._queue.put(job)
        return job.future

    async def run(self, payload: Any, group: Hashable = None) -> Any:
        return await asyncio.wrap_future(self.submit(payload, group))

    def _release(self, _: Future) -> None:
        with self._lock:
            self._pending -= 1

    def _collect(self, first: Job) -> tuple[list[Job], bool]:
        jobs, stop = [first], False
        deadline = time.perf_counter() + self.max_wait_s
        while len(jobs) < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            try:
                item = self._queue.get(timeout=max(0.0, remaining)) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                stop = True
                break
            jobs.append(item)
        return jobs, stop

    def _run(self) -> None:
        stop = False
        while not stop or not self._queue.empty():
            item = self._queue.get()
            if item is _STOP:
                stop = True
                continue
            jobs, stop_now = self._collect(item)
            stop = stop or stop_now
            groups: dict[Hashable, list[Job]] = defaultdict(list)
            for job in jobs:
                if job.future.set_running_or_notify_cancel():
                    groups[job.group].append(job)
            for group, members in groups.items():
                self._execute(group, members)

    def _execute(self, group: Hashable, jobs: list[Job]) -> None:
        start = time.perf_counter()
        try:
            results = self._batch_fn([j.payload for j in jobs], group)
        except Exception as exc:
            if len(jobs) == 1:
                jobs[0].future.set_exception(exc)
                return
            log.warning("batch of %d failed (%s); retrying its requests one by one", len(jobs), exc)
            for job in jobs:
                self._execute(group, [job])
            return
        if self._on_batch:
            self._on_batch(len(jobs), time.perf_counter() - start)
        for job, result in zip(jobs, results):
            job.future.set_result(result)
