"""The decode worker: one thread owns the model and runs continuous batching.

Requests queue with a priority (stream finals before stream interims before files) and a tenant. The
worker keeps one running batch and works step by step; at each step boundary it

1. drops what was cancelled (a client that went away, a deadline that passed, an interim overtaken by
   newer audio of the same stream) and what used more than its compute limit (``Job.time_limit_s``:
   seconds of the loop's time, each step's time shared among requests by their rows, so a request's
   charge does not grow with how many others decode beside it): queued jobs leave the queue, running
   ones leave the batch;
2. admits waiting work in priority order, tenants taking turns within a priority: new requests (their
   adapter slot pinned for their life) and the next windows or fallback passes of running ones, up to
   the row budget, with at most ``max_admissions`` encoder passes per step (an encoder pass stalls the
   live rows, so a burst of new files cannot freeze the streams already decoding) and at most
   ``max_rows_per_tenant`` rows for one tenant (so another tenant's request finds rows free at once);
3. runs one decoder step for all live rows; requests that finish resolve their futures at once
   (after the N-best rescorer, for those that asked for one).

So a short clip submitted while a long file decodes joins the running batch at the next step and
finishes long before the file, and a row stuck in a repetition loop holds only its own row.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

import numpy as np

from ..adapters.pool import NoFreeSlot, SlotPool
from ..audio import SAMPLE_RATE_HZ
from ..decoding import DecodingOptions, Transcription
from ..errors import DecodeTimeout, InvalidAdapter, NotReady, Overloaded, ServerBusy, SplitASRError

log = logging.getLogger(__name__)

PRIORITY_FINAL = 0  # a stream's final result: its speech has ended, the user waits for it
PRIORITY_INTERIM = 1  # a stream's interim hypothesis
PRIORITY_FILE = 2  # whole files (REST, gRPC Recognize)


class Superseded(SplitASRError):
    """A queued or running decode was replaced by a newer one for the same stream."""

    code = "superseded"


@dataclass(eq=False)
class Job:
    audio: np.ndarray
    options: DecodingOptions
    adapter_sha256: str | None = None  # None: the backbone alone
    rescorer_sha256: str | None = None  # an N-best rescorer's
    priority: int = PRIORITY_FILE
    tenant: str = ""
    key: Hashable | None = None  # a newer job with the same key supersedes this one
    future: Future = field(default_factory=Future)
    seq: int = 0
    enqueued_at: float = field(default_factory=time.perf_counter)
    request: object | None = None  # the decoder's request once started
    # called on the worker's thread with each piece of new stable text while the job decodes (see the
    # decoder's ``start``); the pieces concatenate to the result's text
    listener: Callable[[str], None] | None = None
    slot: int = 0
    time_limit_s: float | None = None  # the most loop time it may use (its share of each step; queueing excluded)
    compute_s: float = 0.0  # loop time used so far


@dataclass
class WorkerStats:
    steps: int = 0
    max_rows: int = 0  # most rows in one decoder step
    max_adapters: int = 0  # most distinct adapters among one step's requests (the base model counts as one)
    max_tenants: int = 0  # most tenants among one step's requests
    admitted_mid_flight: int = 0  # requests that joined while other rows were decoding
    cancelled: int = 0
    superseded: int = 0
    timed_out: int = 0


@dataclass(frozen=True)
class StepShape:
    """One decoder step, as :attr:`DecodeWorker.step_listeners` see it."""

    rows: int  # rows in the forward pass
    requests: int  # requests those rows belong to
    adapters: int  # distinct adapters among them (the base model counts as one)
    tenants: int  # distinct tenants among them
    seconds: float


class DecodeWorker:
    """Runs ``decoder`` (a Whisper or CTC decoder, see :mod:`splitasr.decoding`) for queued jobs."""

    def __init__(self, decoder, pool: SlotPool | None, *, max_queue: int = 64, max_admissions: int = 4,
                 max_queue_per_tenant: int | None = None, max_rows_per_tenant: int | None = None,
                 static: bool = False,
                 rescore: Callable[[list[str | None], list[Transcription]], list[Transcription]] | None = None,
                 on_step: Callable[[int, float], None] | None = None,
                 on_done: Callable[[Job], None] | None = None, name: str = "decode-worker"):
        self.decoder = decoder
        self.pool = pool
        self.max_queue = max_queue
        # one tenant's burst must not take every place: by default it may hold half of them
        self.max_queue_per_tenant = max_queue_per_tenant or max(1, max_queue // 2)
        self.max_admissions = max_admissions
        self.max_rows_per_tenant = max_rows_per_tenant or decoder.max_rows
        # static request batching (the baseline of `splitasr bench arrivals`): new requests join only an
        # empty batch, which then runs until every request in it is done
        self.static = static
        self._rescore = rescore
        self._on_step = on_step
        self._on_done = on_done
        self._queue: list[Job] = []
        self._running: dict[int, Job] = {}  # id(request) -> job
        self._lock = threading.Condition()
        self._seq = itertools.count()
        self._accepting = False
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.stats = WorkerStats()
        # called after every step, in the worker's thread (e.g. per-replica metrics in splitasr.scale)
        self.step_listeners: list[Callable[[StepShape], None]] = []

    # lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        self._accepting = True
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, let queued and running jobs finish, then end the worker."""
        with self._lock:
            self._accepting = False
            self._stopping = True
            self._lock.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def pending(self) -> int:
        """Jobs queued or decoding."""
        return len(self._queue) + len(self._running)

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def live_rows(self) -> int:
        return self.decoder.live_rows

    # submission ----------------------------------------------------------------------------------
    def submit(self, job: Job) -> Future:
        """Queue ``job``; its future resolves to a Transcription (cancel it to withdraw the job)."""
        if not self._accepting:
            raise NotReady("the server is not accepting requests (starting or shutting down)")
        self.decoder.check(job.audio, job.options)  # bad options fail now, not in the worker
        with self._lock:
            if self.pending >= self.max_queue:
                raise ServerBusy(f"server is at capacity ({self.pending} requests in progress or queued); "
                                 "retry later")
            held = sum(1 for j in (*self._queue, *self._running.values()) if j.tenant == job.tenant)
            if held >= self.max_queue_per_tenant:
                raise Overloaded(f"this tenant already has {held} requests in progress or queued, its share of "
                                 f"{self.max_queue_per_tenant} (SPLITASR_MAX_QUEUED_REQUESTS_PER_TENANT); retry "
                                 "when one is done")
            if job.key is not None:
                self._supersede(job.key)
            job.seq = next(self._seq)
            self._queue.append(job)
            self._lock.notify_all()
        return job.future

    def _supersede(self, key: Hashable) -> None:
        for old in [j for j in self._queue if j.key == key] + [j for j in self._running.values() if j.key == key]:
            self.stats.superseded += 1
            _fail(old.future, Superseded("a newer decode of the same stream replaced this one"))

    # the loop ------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._running and not self._stopping:
                    self._lock.wait()
                if self._stopping and not self._queue and not self._running:
                    return
            try:
                self._cycle()
            except Exception as exc:
                log.exception("decode step failed; failing the %d running request(s)", len(self._running))
                with self._lock:
                    running = list(self._running.values())
                for job in running:
                    self._finish(job, error=exc)
                self._reset_decoder()

    def _cycle(self) -> None:
        start = time.perf_counter()
        self._drop_cancelled()
        self._complete([self._running[id(r)] for r in self.decoder.poll() if id(r) in self._running])
        self._admit()
        if not self.decoder.live_rows:
            with self._lock:  # nothing fits yet (every slot pinned), or only speech checks run: wait
                if self._queue and not self._running:
                    self._lock.wait(0.05)
                elif self._running and self.decoder.checking:
                    self._lock.wait(0.005)
            return
        stepping = time.perf_counter()
        rows = self.decoder.live_rows
        held = self.decoder.rows_by_request()
        with self._lock:  # the requests whose rows are in this step (not those waiting for a pass)
            in_step = [job for key, job in self._running.items() if key in held]
        adapters, tenants = len({j.adapter_sha256 for j in in_step}), len({j.tenant for j in in_step})
        done = self.decoder.step()
        end = time.perf_counter()
        seconds = end - stepping
        self.stats.steps += 1
        self.stats.max_rows = max(self.stats.max_rows, rows)
        self.stats.max_adapters = max(self.stats.max_adapters, adapters)
        self.stats.max_tenants = max(self.stats.max_tenants, tenants)
        self._charge(held, end - start)
        if self._on_step:
            self._on_step(rows, seconds)
        if self.step_listeners:
            shape = StepShape(rows, len(in_step), adapters, tenants, seconds)
            for listener in self.step_listeners:
                listener(shape)
        self._complete([self._running[id(r)] for r in done if id(r) in self._running])

    def _charge(self, held: dict[int, int], seconds: float) -> None:
        """Share a cycle's ``seconds`` (admissions and the step) among the requests by their rows."""
        total = sum(held.values())
        with self._lock:
            for key, rows in held.items():
                job = self._running.get(key)
                if job is not None:
                    job.compute_s += seconds * rows / total

    def _drop_cancelled(self) -> None:
        with self._lock:
            gone = [j for j in self._queue if j.future.done()]
            for job in gone:
                self._queue.remove(job)
                self.stats.cancelled += 1
        with self._lock:
            running = list(self._running.values())
        for job in running:
            if job.time_limit_s is not None and job.compute_s > job.time_limit_s and not job.future.done():
                self.stats.timed_out += 1
                _fail(job.future, DecodeTimeout(
                    f"decoding this audio ({audio_seconds(job):.1f} s) took more than its limit of "
                    f"{job.time_limit_s:g} s of decoding (SPLITASR_DECODE_TIME_LIMIT_RTF x its length, at least "
                    "SPLITASR_DECODE_TIME_LIMIT_MIN_S) and was stopped: audio that is mostly noise or music "
                    "costs the most (try the VAD filter)"))
        for job in [j for j in running if j.future.done()]:
            self.decoder.cancel(job.request)
            self.stats.cancelled += 1
            self._release(job)

    def _admit(self) -> None:
        """Admit waiting passes of running requests and new jobs, best first, within the budgets."""
        rows_left = self.decoder.max_rows - self.decoder.live_rows
        encoders_left = self.max_admissions
        busy = self.decoder.live_rows > 0
        waiting = [(self._running[id(p.request)], p) for p in self.decoder.waiting() if id(p.request) in self._running]
        with self._lock:
            queued = list(self._queue)
            tenant_rows: dict[str, int] = {}
            for key, n in self.decoder.rows_by_request().items():
                if key in self._running:
                    tenant = self._running[key].tenant
                    tenant_rows[tenant] = tenant_rows.get(tenant, 0) + n
        admitted = []
        if self.static and self._running:
            queued = []
        for job, p in _fair_order(waiting + [(j, None) for j in queued]):
            if encoders_left <= 0 or rows_left <= 0:
                break
            held = tenant_rows.get(job.tenant, 0)
            if held and held + (p.max_rows if p is not None else 1) > self.max_rows_per_tenant:
                continue  # this tenant has its share of rows: others' requests go first
            if p is None:  # a new job: start its request
                p = self._start(job, rows_left)
                if p is None:
                    continue
            if p.max_rows > rows_left or (held and held + p.max_rows > self.max_rows_per_tenant):
                continue
            admitted.append(p)
            rows_left -= p.max_rows
            tenant_rows[job.tenant] = held + p.max_rows
            if p.needs_encoder:
                encoders_left -= 1
        if admitted:
            self.decoder.admit(admitted)
            if busy:
                self.stats.admitted_mid_flight += sum(1 for p in admitted if p.first)

    def _start(self, job: Job, rows_left: int):
        """Start a queued job's request (pinning its adapter). Returns its first pass, or None when it
        finished at once (silence), failed, or must wait for a free slot."""
        try:
            slot = self.pool.pin(job.adapter_sha256) if self.pool is not None else 0
        except NoFreeSlot:
            return None
        except Exception as exc:  # noqa: BLE001 - an adapter that fails to load fails its own request
            with self._lock:
                self._queue.remove(job)
            _fail(job.future, exc if isinstance(exc, SplitASRError) else InvalidAdapter(str(exc)))
            return None
        with self._lock:
            self._queue.remove(job)
        job.slot = slot
        try:
            job.request = self.decoder.start(job.audio, job.options, slot, listener=job.listener)
        except Exception as exc:  # noqa: BLE001
            if self.pool is not None:
                self.pool.unpin(job.adapter_sha256)
            _fail(job.future, exc)
            return None
        with self._lock:
            self._running[id(job.request)] = job
        if job.request.done:
            self._complete([job])
            return None
        return job.request.pending

    def _complete(self, jobs: list[Job]) -> None:
        for job in [j for j in jobs if getattr(j.request, "error", None)]:
            reason = job.request.error
            self._finish(job, error=InvalidAdapter(f"decoding failed: {reason}; the adapter's weights must keep "
                                                   "activations finite") if job.adapter_sha256 else
                         SplitASRError(f"decoding failed: {reason}"))
        jobs = [j for j in jobs if not getattr(j.request, "error", None)]
        results = [j.request.result for j in jobs]
        rescore = [j.rescorer_sha256 for j in jobs]
        if self._rescore and any(rescore):
            try:
                results = self._rescore(rescore, results)
            except Exception as exc:  # noqa: BLE001 - a bad rescorer fails only the rows that use it
                for job in jobs:
                    if job.rescorer_sha256:
                        self._finish(job, error=exc)
                jobs = [j for j in jobs if not j.rescorer_sha256]
                results = [j.request.result for j in jobs]
        for job, result in zip(jobs, results):
            self._finish(job, result=result)

    def _finish(self, job: Job, *, result: Transcription | None = None, error: Exception | None = None) -> None:
        self._release(job)
        if error is not None:
            _fail(job.future, error)
        else:
            try:
                job.future.set_result(result)
            except InvalidStateError:  # cancelled meanwhile
                pass
        if self._on_done:
            self._on_done(job)

    def _release(self, job: Job) -> None:
        with self._lock:
            was_running = job.request is not None and self._running.pop(id(job.request), None) is not None
            self._lock.notify_all()
        if was_running and self.pool is not None:
            self.pool.unpin(job.adapter_sha256)

    def _reset_decoder(self) -> None:
        reset = getattr(self.decoder, "reset", None)
        if reset:
            reset()


def _fail(future: Future, error: Exception) -> None:
    try:
        future.set_exception(error)
    except InvalidStateError:
        pass


def _fair_order(items: list[tuple[Job, object | None]]) -> list[tuple[Job, object | None]]:
    """Priority first; within a priority, tenants take turns (each in arrival order)."""
    out = []
    for priority in sorted({job.priority for job, _ in items}):
        by_tenant: dict[str, list] = {}
        for item in sorted((i for i in items if i[0].priority == priority), key=lambda i: i[0].seq):
            by_tenant.setdefault(item[0].tenant, []).append(item)
        queues = sorted(by_tenant.values(), key=lambda q: q[0][0].seq)
        while queues:
            for q in list(queues):
                out.append(q.pop(0))
                if not q:
                    queues.remove(q)
    return out


def audio_seconds(job: Job) -> float:
    return len(job.audio) / SAMPLE_RATE_HZ
