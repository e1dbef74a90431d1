"""JobManager: a tenant's training jobs from upload to adapter: queue, runners, records, events.

- ``submit`` checks a job completely (:mod:`.validation`), writes its recordings into the job's work
  folder and queues it; the queue is bounded (``SPLITASR_TRAIN_MAX_QUEUED_JOBS`` in all,
  ``SPLITASR_TRAIN_MAX_JOBS_PER_TENANT`` each, queued or running; 429 above).
- ``SPLITASR_TRAIN_WORKERS`` runner threads each own one worker process (:mod:`.worker`), started on
  demand and stopped after ``SPLITASR_TRAIN_WORKER_IDLE_SECONDS`` without work; jobs run in order.
- Every ending (success, failure, cancel, shutdown) deletes the job's work folder with its recordings;
  start-up deletes any left by a crash and marks jobs that were queued or running failed.
- Only a whole adapter that validates against the serving backbone is kept: stored under the job's
  name (``store=true``), or kept for one download (``store=false``) and then deleted.
- A tenant sees only its own jobs: another tenant's job id is "not found".

Thread-safe: the REST app, the gRPC server (maybe on another event loop) and the runner threads share
one manager; async callers ``watch`` a job's events without blocking their loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import shutil
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from .. import observability
from ..config import Settings
from ..engine.engine import Engine
from ..errors import InvalidInput, NotFound, NotReady, Overloaded
from ..fileio import atomic_write_bytes
from .execution import CANCEL_GRACE_S, Execution
from .records import (
    ACTIVE,
    CANCELLED,
    FAILED,
    JOB_ID_PATTERN,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    JobRecord,
    RecordFiles,
    new_job_id,
)
from .validation import JobLimits, JobRequest, check_parameters, prepare_job
from .views import job_view
from .worker import WorkerConfig

log = logging.getLogger(__name__)

MAX_FINISHED_PER_TENANT = 100  # older finished records (and their results) are deleted
JANITOR_INTERVAL_S = 60.0
NOT_STARTED = ("server_shutdown", "the server shut down before the job started; its recordings were deleted; submit it again")


class JobManager:
    """Training jobs of every tenant on one server process (see the module docstring)."""

    def __init__(self, settings: Settings, engine: Engine):
        self.settings = settings
        self.engine = engine
        self.root = settings.training_jobs_dir
        self.files: RecordFiles | None = None
        self.disabled_reason: str | None = None
        self.worker_config = WorkerConfig(settings.backbone, settings.backbone_cache_dir, settings.device,
                                          settings.quantize, settings.train_threads,
                                          settings.train_gpu_memory_fraction)
        self._jobs: dict[str, JobRecord] = {}
        self._queue: deque[str] = deque()
        self._cond = threading.Condition()
        self._waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._threads: list[threading.Thread] = []
        self._executions: list[Execution] = []
        self._lock_file = None
        self._started = False
        self.closing = False
        self._stop = threading.Event()
        self._limits: JobLimits | None = None

    # lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Take the jobs directory, recover from a crash, start the runners. Idempotent."""
        with self._cond:
            if self._started:
                return
            self._started = True
            if self.settings.train_workers == 0:
                self.disabled_reason = "training jobs are turned off on this server (SPLITASR_TRAIN_WORKERS=0)"
                return
            if not self._take_directory():
                return
            self._recover()
        for slot in range(self.settings.train_workers):
            execution = Execution(self, slot)
            self._executions.append(execution)
            self._threads.append(threading.Thread(target=execution.run, name=f"train-runner-{slot}", daemon=True))
        self._threads.append(threading.Thread(target=self._janitor, name="train-janitor", daemon=True))
        for thread in self._threads:
            thread.start()
        observability.track_jobs(self)

    def _take_directory(self) -> bool:
        """Own the jobs directory (one server process per directory: its restart recovery is ours)."""
        try:
            files = RecordFiles(self.root)
            handle = open(self.root / "lock", "a+")  # noqa: SIM115 - held open for the manager's lifetime
        except OSError as exc:
            self.disabled_reason = f"training jobs are unavailable: the jobs directory {self.root} is not usable " \
                                   f"({exc.strerror}; set SPLITASR_JOBS_DIR)"
            log.error("%s", self.disabled_reason)
            return False
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            self.disabled_reason = (f"training jobs are unavailable: another server process uses the jobs "
                                    f"directory {self.root} (set SPLITASR_JOBS_DIR)")
            log.info("%s", self.disabled_reason)
            return False
        self.files, self._lock_file = files, handle
        return True

    def _recover(self) -> None:
        """Jobs a crash or restart interrupted fail; every leftover recording is deleted."""
        assert self.files is not None
        now = time.time()
        for job in self.files.load_all():
            if job.status in ACTIVE:
                when = "before it started" if job.status == QUEUED else "while it was running"
                job.status, job.finished_at = FAILED, now
                job.error = {"code": "server_restarted",
                             "message": f"the server restarted {when}; its recordings were deleted and no adapter "
                                        "was kept. Submit the job again"}
                job.progress["stage"] = "done"
                job.add_event("status", f"failed: {job.error['message']}", {"status": FAILED}, level="error")
                self.files.save(job)
            self._jobs[job.id] = job
        for folder in self.files.work_dirs():
            log.warning("deleting the recordings of an interrupted training job (%s)", folder.name)
            shutil.rmtree(folder, ignore_errors=True)
        for tmp in self.root.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        self._expire_results(now)

    def close(self, timeout: float = 30.0) -> None:
        """Stop the runners and workers; jobs still queued or running fail (their recordings deleted)."""
        with self._cond:
            if not self._started or self.closing:
                return
            self.closing = True
            self._stop.set()
            self._cond.notify_all()
        for execution in self._executions:
            execution.kill_worker()
        for thread in self._threads:
            thread.join(timeout)
        with self._cond:
            for job_id in list(self._queue):
                self._finish(self._jobs[job_id], FAILED, error=NOT_STARTED)
            self._queue.clear()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _janitor(self) -> None:
        while not self._stop.wait(JANITOR_INTERVAL_S):
            with self._cond:
                self._expire_results(time.time())

    # checks --------------------------------------------------------------------------------------
    def _require_available(self) -> RecordFiles:
        self.start()
        if self.disabled_reason:
            raise NotReady(self.disabled_reason)
        if self.closing:
            raise NotReady("the server is shutting down; submit the job again after it restarts")
        assert self.files is not None
        return self.files

    def limits(self) -> JobLimits:
        """This server's job limits (needs the backbone: NotReady while it loads)."""
        if self._limits is None:
            if not self.engine.ready or self.engine.spec is None or self.engine.backbone is None:
                raise NotReady(self.engine.load_error or "the backbone is still loading; retry shortly")
            from ..backbones.whisper import WhisperBackbone

            if not isinstance(self.engine.backbone, WhisperBackbone):
                raise InvalidInput(f"training jobs need a Whisper backbone; this server runs "
                                   f"{self.engine.backbone_name!r}, a CTC model")
            self._limits = JobLimits.from_settings(self.settings, list(self.engine.spec.linear_shapes),
                                                   self.engine.backbone.languages)
        return self._limits

    def _check_capacity(self, tenant: str) -> None:
        active = [j for j in self._jobs.values() if j.active]
        mine = sum(j.tenant == tenant for j in active)
        if mine >= self.settings.train_max_jobs_per_tenant:
            raise Overloaded(f"you have {mine} training job(s) queued or running, the most allowed "
                             "(SPLITASR_TRAIN_MAX_JOBS_PER_TENANT); wait for one to finish or cancel one")
        if len(active) >= self.settings.train_max_queued_jobs:
            raise Overloaded(f"the training queue is full ({len(active)} jobs); retry later")

    def _check_quota(self, tenant: str, name: str | None) -> None:
        if name is None:
            return
        names = {r.name for r in self.engine.store.list(tenant)}
        if name not in names and len(names) >= self.engine.store.max_adapters:
            raise InvalidInput(f"adapter quota reached: at most {self.engine.store.max_adapters} adapters per "
                               "tenant; delete one first or train with store=false")

    # jobs ----------------------------------------------------------------------------------------
    def submit(self, tenant: str, request: JobRequest) -> dict[str, Any]:
        """Check and queue a job (blocking: decodes every recording). Returns the job's view."""
        files = self._require_available()
        limits = self.limits()
        params = check_parameters(request.parameters, request.name, request.store, limits)
        with self._cond:
            self._check_capacity(tenant)
        self._check_quota(tenant, request.name if request.store else None)
        job_id = new_job_id()
        work_dir = files.work_dir(job_id)
        try:
            prepared = prepare_job(replace(request, parameters=params), limits, work_dir)
            job = JobRecord(job_id, tenant, params, request.name if request.store else None, request.store,
                            prepared.utterances, prepared.audio_seconds, prepared.train_utterances,
                            prepared.dev_utterances, request.upload_bytes, progress={"stage": QUEUED})
            with self._cond:
                self._check_capacity(tenant)  # again: others may have queued meanwhile
                if self.closing:
                    raise NotReady("the server is shutting down; submit the job again after it restarts")
                self._jobs[job_id] = job
                self._queue.append(job_id)
                self._event(job, "status", f"queued: {job.utterances} utterances, {job.audio_seconds:.1f} s of audio "
                            f"({job.train_utterances} to train on, {job.dev_utterances} held out)",
                            {"status": QUEUED})
                self._cond.notify_all()
        except BaseException:
            shutil.rmtree(work_dir, ignore_errors=True)
            raise
        log.info("training job %s queued for tenant %s: %d utterances, %.1f s, %d bytes", job_id, tenant,
                 job.utterances, job.audio_seconds, job.upload_bytes)
        return job_view(job)

    def _find(self, tenant: str, job_id: str) -> JobRecord:
        job = self._jobs.get(job_id) if isinstance(job_id, str) and JOB_ID_PATTERN.fullmatch(job_id) else None
        if job is None or job.tenant != tenant:
            raise NotFound(f"training job {job_id[:40]!r} does not exist")
        return job

    def get(self, tenant: str, job_id: str) -> dict[str, Any]:
        self._require_available()
        with self._cond:
            return job_view(self._find(tenant, job_id))

    def list(self, tenant: str, limit: int = 20, after: str | None = None) -> tuple[list[dict[str, Any]], bool]:
        """The tenant's jobs, newest first; ``after``: the last id of the previous page."""
        self._require_available()
        with self._cond:
            jobs = sorted((j for j in self._jobs.values() if j.tenant == tenant),
                          key=lambda j: (j.created_at, j.id), reverse=True)
            if after is not None:
                position = next((i for i, j in enumerate(jobs) if j.id == after), None)
                if position is None:
                    raise InvalidInput(f"after: no job {after[:40]!r} in your list")
                jobs = jobs[position + 1:]
            return [job_view(j) for j in jobs[:limit]], len(jobs) > limit

    def cancel(self, tenant: str, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job; waits (blocking) until it has stopped."""
        self._require_available()
        with self._cond:
            job = self._find(tenant, job_id)
            if job.status in TERMINAL:
                raise InvalidInput(f"training job {job_id} already {job.status}; there is nothing to cancel")
            if job.status == QUEUED:
                self._queue.remove(job_id)
                self._finish(job, CANCELLED)
                return job_view(job)
            if not job.cancel_requested:
                job.cancel_requested = True
                self._event(job, "message", "cancel requested: stopping the training")
            deadline = time.monotonic() + CANCEL_GRACE_S + 10
            while job.status == RUNNING and time.monotonic() < deadline:
                self._cond.wait(0.5)
            return job_view(job)

    # events --------------------------------------------------------------------------------------
    def events_after(self, tenant: str, job_id: str, after: int = 0) -> tuple[list[dict[str, Any]], bool, dict]:
        """(events with id > after, whether the job has ended, the job's view)."""
        self._require_available()
        with self._cond:
            job = self._find(tenant, job_id)
            return [dict(e) for e in job.events if e["id"] > after], job.status in TERMINAL, job_view(job)

    async def watch(self, tenant: str, job_id: str, after: int = 0,
                    heartbeat: float | None = None) -> AsyncIterator[tuple[dict | None, dict]]:
        """Yield (event, job view) for every event after ``after``, live, until the job has ended; with
        ``heartbeat``, (None, view) after that many seconds without an event."""
        self.events_after(tenant, job_id, after)  # NotFound before anything is yielded
        wake = asyncio.Event()
        token = (asyncio.get_running_loop(), wake)
        with self._cond:
            self._waiters.setdefault(job_id, set()).add(token)
        try:
            while True:
                wake.clear()
                events, ended, view = self.events_after(tenant, job_id, after)
                for event in events:
                    after = event["id"]
                    yield event, view
                if ended:
                    return
                try:
                    await asyncio.wait_for(wake.wait(), heartbeat)
                except asyncio.TimeoutError:
                    yield None, view
        finally:
            with self._cond:
                self._waiters.get(job_id, set()).discard(token)

    def _event(self, job: JobRecord, kind: str, message: str, data: dict[str, Any] | None = None,
               level: str = "info", persist: bool = True) -> None:
        """Record an event and wake the job's watchers. Call under the lock."""
        job.add_event(kind, message, data, level)
        if persist and self.files is not None:
            self.files.save(job)
        for loop, wake in self._waiters.get(job.id, ()):
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(wake.set)
        self._cond.notify_all()

    # results -------------------------------------------------------------------------------------
    def result_content(self, tenant: str, job_id: str) -> tuple[bytes, dict[str, Any]]:
        """The adapter file a succeeded job produced, and the job's view."""
        files = self._require_available()
        with self._cond:
            job = self._find(tenant, job_id)
            if job.status != SUCCEEDED or not job.result:
                raise InvalidInput(f"training job {job_id} is {job.status}: an adapter exists only once it succeeded")
            result, view = dict(job.result), job_view(job)
        if result["stored"]:
            try:
                return self.engine.store.read(result["sha256"]), view
            except FileNotFoundError:
                raise NotFound(f"the adapter of job {job_id} was deleted from the store since") from None
        try:
            return files.result_path(job_id).read_bytes(), view
        except FileNotFoundError:
            raise NotFound(f"the adapter of job {job_id} (store=false) was downloaded already, or expired, and is "
                           "deleted from the server") from None

    def downloaded(self, tenant: str, job_id: str) -> None:
        """A client received the whole adapter: a ``store=false`` result is deleted now."""
        with self._cond:
            job = self._find(tenant, job_id)
            if job.result is None or job.result["stored"] or job.result.get("downloaded"):
                return
            assert self.files is not None
            self.files.result_path(job_id).unlink(missing_ok=True)
            job.result["downloaded"] = True
            self._event(job, "message", "adapter downloaded; deleted from the server (store=false)")

    def _expire_results(self, now: float) -> None:
        """Delete store=false results past their time, and files no record claims. Call under the lock."""
        assert self.files is not None
        ttl = self.settings.train_result_ttl_seconds
        for path in self.files.results():
            job = self._jobs.get(path.stem)
            keep = (job is not None and job.result is not None and not job.result.get("downloaded")
                    and job.finished_at is not None and now - job.finished_at < ttl)
            if not keep:
                path.unlink(missing_ok=True)
                if job is not None and job.result is not None and not job.result.get("expired"):
                    job.result["expired"] = True
                    self._event(job, "message", "adapter not downloaded in time; deleted from the server")

    # used by the runners ---------------------------------------------------------------------------
    def next_job(self, timeout: float | None) -> JobRecord | None:
        """Block until a job is queued (then mark it running), ``timeout`` passes or the manager closes."""
        with self._cond:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._queue and not self.closing:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            if self.closing:
                return None
            job = self._jobs[self._queue.popleft()]
            job.status, job.started_at = RUNNING, time.time()
            job.progress = {"stage": "starting"}
            self._event(job, "status", "running", {"status": RUNNING})
            return job

    def progress(self, job: JobRecord, kind: str, message: str, changes: dict[str, Any],
                 metrics: dict[str, Any] | None = None, persist: bool = True) -> None:
        with self._cond:
            job.progress.update(changes)
            job.metrics.update(metrics or {})
            self._event(job, kind, message, changes if kind == "step" else {**changes, **(metrics or {})},
                        persist=persist)

    def keep_result(self, job: JobRecord, data: bytes) -> dict[str, Any]:
        """Validate a finished adapter against the serving backbone and keep it (store or result file)."""
        if job.store:
            assert job.name is not None
            record = self.engine.put_adapter(job.tenant, job.name, data)
            return {"name": record.name, "sha256": record.sha256, "bytes": record.size, "kind": record.kind,
                    "stored": True}
        adapter = self.engine.validate_adapter(data)
        assert self.files is not None
        atomic_write_bytes(self.files.result_path(job.id), data)
        return {"name": None, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "kind": adapter.kind,
                "stored": False, "downloaded": False}

    def finish(self, job: JobRecord, status: str, *, error: tuple[str, str] | None = None,
               result: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None) -> None:
        with self._cond:
            job.metrics.update(metrics or {})
            self._finish(job, status, error=error, result=result)

    def _finish(self, job: JobRecord, status: str, *, error: tuple[str, str] | None = None,
                result: dict[str, Any] | None = None) -> None:
        """End a job: status, event, record; its recordings are deleted. Call under the lock."""
        job.status, job.finished_at = status, time.time()
        job.progress["stage"] = "done"
        if status == SUCCEEDED:
            job.progress["fraction"] = 1.0
        job.result = result
        job.error = {"code": error[0], "message": error[1]} if error else None
        if self.files is not None:
            shutil.rmtree(self.files.work_dir(job.id), ignore_errors=True)
        message = {SUCCEEDED: "succeeded", CANCELLED: "cancelled"}.get(status, "failed")
        if error:
            message += f": {error[1]}"
        elif result:
            message += f": {'stored as ' + repr(result['name']) if result['stored'] else 'ready to download'} " \
                       f"(sha256 {result['sha256'][:12]}..., {result['bytes']} bytes)"
        self._event(job, "status", message, {"status": status}, level="error" if status == FAILED else "info")
        observability.observe_train_job(status, (job.finished_at - (job.started_at or job.created_at)))
        log.info("training job %s %s%s", job.id, status, f" ({error[0]})" if error else "")
        self._trim(job.tenant)

    def _trim(self, tenant: str) -> None:
        finished = sorted((j for j in self._jobs.values() if j.tenant == tenant and j.status in TERMINAL),
                          key=lambda j: j.created_at)
        for job in finished[:-MAX_FINISHED_PER_TENANT]:
            del self._jobs[job.id]
            if self.files is not None:
                self.files.delete(job.id)

    def counts(self) -> dict[str, int]:
        """Jobs by status (for the metrics)."""
        with self._cond:
            out = {s: 0 for s in (QUEUED, RUNNING)}
            for job in self._jobs.values():
                if job.status in out:
                    out[job.status] += 1
            return out

    def worker_pids(self) -> list[int]:
        """Process ids of the training workers alive now (for operators and tests)."""
        return [e.worker.pid for e in self._executions if e.worker is not None and e.worker.alive()]

    def work_dir(self, job: JobRecord) -> Path:
        assert self.files is not None
        return self.files.work_dir(job.id)
