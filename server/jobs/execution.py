"""One runner thread: takes queued jobs one by one, runs each in its worker process, ends it.

A job ends exactly once, in one of these ways:

- the worker reports a finished adapter: it is validated against the serving backbone and kept
  (stored under the job's name, or kept for one download), then the job succeeded;
- the worker reports a failure (the job's data or parameters), or dies (crash, out of memory):
  failed, with the reason;
- a cancel: the worker stops at its next step; one that does not within ``CANCEL_GRACE_S`` is killed;
- it runs past ``SPLITASR_TRAIN_MAX_JOB_SECONDS``: the worker is killed and the job failed.

In every case the job's work folder (recordings, manifests, any half-written file) is deleted.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SplitASRError
from .records import CANCELLED, FAILED, SUCCEEDED, JobRecord
from .runner import Worker, WorkerDied

if TYPE_CHECKING:
    from .manager import JobManager

log = logging.getLogger(__name__)

CANCEL_GRACE_S = 5.0  # a worker that has not stopped this long after a cancel is killed
POLL_S = 0.25
SHUTDOWN = ("server_shutdown", "the server shut down while the job was running; no adapter was kept. Submit it again")


def _metric_line(fields: dict[str, Any], metric: str | None) -> str:
    parts = []
    if fields.get("train_loss") is not None:
        parts.append(f"train loss {fields['train_loss']:.4f}")
    if fields.get("dev_error") is not None:
        parts.append(f"dev {metric or 'error'} {fields['dev_error']:.4f}")
    return ", ".join(parts)


class Execution:
    """The runner of one worker slot (``run`` is the thread's target)."""

    def __init__(self, manager: JobManager, slot: int):
        self.manager = manager
        self.slot = slot
        self.worker: Worker | None = None

    def run(self) -> None:
        try:
            while True:
                idle = self.manager.settings.train_worker_idle_seconds if self.worker else None
                job = self.manager.next_job(idle)
                if self.manager.closing:
                    break
                if job is None:  # idle long enough: give the worker's memory back
                    self._stop_worker()
                    continue
                self._execute(job)
        finally:
            self.kill_worker()

    def _stop_worker(self) -> None:
        if self.worker is not None:
            log.info("training worker %s idle: stopping it", self.worker.pid)
            self.worker.stop()
            self.worker = None

    def kill_worker(self) -> None:
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.kill()

    # one job ----------------------------------------------------------------------------------------
    def _order(self, job: JobRecord) -> dict[str, Any]:
        work = self.manager.work_dir(job)
        dev = work / "dev.jsonl"
        return {"job_id": job.id, "work_dir": str(work), "train_manifest": str(work / "train.jsonl"),
                "dev_manifest": str(dev) if dev.is_file() else None, "parameters": job.parameters.to_dict()}

    def _execute(self, job: JobRecord) -> None:
        try:
            if self.worker is None or not self.worker.alive():
                self.worker = Worker(self.manager.worker_config, name=f"splitasr-train-{self.slot}")
            self.worker.send(("job", self._order(job)))
            self._follow(job)
        except WorkerDied as exc:
            self.worker = None
            if self.manager.closing:
                self.manager.finish(job, FAILED, error=SHUTDOWN)
            elif job.cancel_requested:
                self.manager.finish(job, CANCELLED)
            else:
                log.error("training job %s: %s", job.id, exc)
                self.manager.finish(job, FAILED, error=("worker_died", f"{exc}; no adapter was kept"))
        except Exception:  # a bug here must not stop the runner
            log.exception("training job %s: runner error", job.id)
            self.manager.finish(job, FAILED, error=("internal_error", "internal error while running the job"))

    def _follow(self, job: JobRecord) -> None:
        """Relay the worker's messages until the job ends."""
        worker = self.worker  # close() may drop self.worker from another thread; its pipe then reads as EOF
        assert worker is not None
        deadline = time.monotonic() + self.manager.settings.train_max_job_seconds
        cancel_sent: float | None = None
        while True:
            if job.cancel_requested and cancel_sent is None:
                worker.send(("cancel", job.id))
                cancel_sent = time.monotonic()
            if cancel_sent is not None and time.monotonic() - cancel_sent > CANCEL_GRACE_S:
                log.info("training job %s: worker did not stop after the cancel; killing it", job.id)
                self.kill_worker()
                self.manager.finish(job, CANCELLED)
                return
            if time.monotonic() > deadline:
                self.kill_worker()
                limit = self.manager.settings.train_max_job_seconds
                message = f"the job ran longer than {limit:g} s (SPLITASR_TRAIN_MAX_JOB_SECONDS); no adapter was kept"
                self.manager.finish(job, FAILED, error=("timeout", message))
                return
            message = worker.receive(POLL_S)
            if message is None or message[1] != job.id:
                continue
            kind = message[0]
            if kind == "progress":
                self._progress(job, message[2], message[3])
            elif kind == "done":
                self._succeed(job, message[2])
                return
            elif kind == "failed":
                self.manager.finish(job, FAILED, error=(message[2], message[3]))
                return
            elif kind == "cancelled":
                self.manager.finish(job, CANCELLED)
                return

    def _progress(self, job: JobRecord, event: str, fields: dict[str, Any]) -> None:
        manager = self.manager
        if event == "loading":
            manager.progress(job, "stage", "loading the backbone in a fresh training worker", {"stage": "loading"})
        elif event == "preparing":
            manager.progress(job, "stage", "preparing: features and frozen encoder states", {"stage": "preparing"})
        elif event == "prepared":
            manager.progress(job, "stage", f"training: {fields['train_utterances']} utterances, up to "
                             f"{fields['epochs']} epoch(s), {fields['steps']} step(s)",
                             {"stage": "training", "epoch": 0, "epochs": fields["epochs"], "step": 0,
                              "steps": fields["steps"], "fraction": 0.0},
                             {"dev_metric": fields["dev_metric"]} if fields.get("dev_metric") else None)
        elif event == "step":
            steps = max(1, fields["steps"])
            manager.progress(job, "step", f"step {fields['step']}/{steps}: loss {fields['loss']:.4f}",
                             {"epoch": fields["epoch"], "step": fields["step"], "steps": steps,
                              "fraction": round(fields["step"] / steps, 4), "loss": round(fields["loss"], 5)},
                             persist=False)
        elif event == "epoch":
            self._epoch(job, fields)

    def _epoch(self, job: JobRecord, fields: dict[str, Any]) -> None:
        metric = job.metrics.get("dev_metric")
        metrics: dict[str, Any] = {}
        if fields["epoch"] == 0:
            if fields.get("dev_error") is not None:
                metrics["dev_before"] = round(fields["dev_error"], 5)
            text = f"epoch 0 (the backbone alone): {_metric_line(fields, metric) or 'no dev set'}"
        else:
            metrics["train_loss"] = round(fields["train_loss"], 5)
            if fields.get("dev_error") is not None:
                metrics["dev_latest"] = round(fields["dev_error"], 5)
            text = f"epoch {fields['epoch']}/{job.parameters.epochs}: {_metric_line(fields, metric)}"
        self.manager.progress(job, "epoch", text, {"epoch": fields["epoch"]}, metrics)

    def _succeed(self, job: JobRecord, summary: dict[str, Any]) -> None:
        manager = self.manager
        manager.progress(job, "stage", "checking the adapter against the serving backbone", {"stage": "storing"})
        metrics = {key: summary.get(key) for key in ("dev_metric", "dev_before", "dev_after", "best_epoch",
                                                     "epochs_run", "steps", "trainable_parameters",
                                                     "peak_rss_bytes")}
        metrics.update(wall_seconds=round(summary["job_wall_seconds"], 2),
                       cpu_seconds=round(summary["job_cpu_seconds"], 2))
        try:
            data = Path(summary["path"]).read_bytes()
            result = manager.keep_result(job, data)
        except SplitASRError as exc:  # e.g. the store's quota or disk: nothing was kept
            manager.finish(job, FAILED, error=(exc.code, f"the adapter could not be kept: {exc}"))
            return
        manager.finish(job, SUCCEEDED, result=result, metrics=metrics)
