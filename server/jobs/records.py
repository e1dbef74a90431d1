"""Training job records: what a job asked for, where it is, what it produced; kept on disk as JSON.

Layout under the jobs directory::

    records/<job id>.json     one record per job (atomic writes), read back at start-up
    work/<job id>/            the job's recordings and manifests while it is queued or running
    results/<job id>.safetensors   the adapter of a finished ``store=false`` job, until downloaded

A record holds no audio and no transcript: counts, seconds, parameters, progress, metrics, the result's
name and hash, and the events a client can replay (status changes, epochs, the latest steps).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_bytes

log = logging.getLogger(__name__)

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
ACTIVE = frozenset({QUEUED, RUNNING})
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})

JOB_ID_PREFIX = "adjob-"
JOB_ID_PATTERN = re.compile(r"^adjob-[0-9a-f]{24}$")
MAX_EVENTS = 400  # per record; past it the oldest step events are dropped (status and epoch events stay)


def new_job_id() -> str:
    return JOB_ID_PREFIX + secrets.token_hex(12)


@dataclass(frozen=True)
class JobParameters:
    """The training hyper-parameters a job asked for (checked by :mod:`splitasr.jobs.validation`)."""

    kind: str = "lora"
    rank: int = 8
    alpha: float | None = None  # None: 2 × rank
    targets: str = "decoder"  # the cheap preset on a CPU: the frozen encoder runs once per utterance
    gate: str | None = None  # glora only: lowrank (default) | output
    experts: int | None = None  # saml only (default 4)
    epochs: int = 10
    batch_size: int = 8
    learning_rate: float = 2e-3
    seed: int = 0
    dev: float = 0.2  # share of the utterances held out for early stopping; 0 = train on all, every epoch

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class JobRecord:
    """One job. Mutated only by :class:`~splitasr.jobs.manager.JobManager`, under its lock."""

    id: str
    tenant: str
    parameters: JobParameters
    name: str | None  # the adapter name it is stored under (None with store=False)
    store: bool
    utterances: int
    audio_seconds: float
    train_utterances: int
    dev_utterances: int
    upload_bytes: int
    status: str = QUEUED
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    cancel_requested: bool = False
    # stage (queued|loading|preparing|training|storing|done), epoch, epochs, step, steps, fraction
    progress: dict[str, Any] = field(default_factory=dict)
    # dev_metric, dev_before, dev_after, best_epoch, epochs_run, train_loss, wall_seconds, cpu_seconds,
    # peak_rss_bytes
    metrics: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None  # name, sha256, bytes, kind, stored, downloaded
    error: dict[str, str] | None = None  # code, message
    events: list[dict[str, Any]] = field(default_factory=list)
    next_event_id: int = 1

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def add_event(self, kind: str, message: str, data: dict[str, Any] | None = None,
                  level: str = "info") -> dict[str, Any]:
        """Append an event (ids count up from 1) and trim old step events past :data:`MAX_EVENTS`.

        Each event keeps the job's status and progress fraction at that moment (a replay shows them)."""
        event = {"object": "adapter.job.event", "id": self.next_event_id, "created_at": round(time.time(), 3),
                 "level": level, "type": kind, "message": message, "status": self.status,
                 "fraction": self.progress.get("fraction", 0.0), "data": data or {}}
        self.next_event_id += 1
        self.events.append(event)
        if len(self.events) > MAX_EVENTS:
            oldest_step = next((i for i, e in enumerate(self.events) if e["type"] == "step"), 0)
            del self.events[oldest_step]
        return event

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["parameters"] = self.parameters.to_dict()
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> JobRecord:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        values["parameters"] = JobParameters(**values["parameters"])
        return cls(**values)


class RecordFiles:
    """The jobs directory: records, per-job work folders and ``store=false`` results."""

    def __init__(self, root: Path):
        self.root = Path(root)
        for sub in ("records", "work", "results"):
            (self.root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)

    def record_path(self, job_id: str) -> Path:
        return self.root / "records" / f"{job_id}.json"

    def work_dir(self, job_id: str) -> Path:
        return self.root / "work" / job_id

    def result_path(self, job_id: str) -> Path:
        return self.root / "results" / f"{job_id}.safetensors"

    def save(self, record: JobRecord) -> None:
        atomic_write_bytes(self.record_path(record.id), json.dumps(record.to_json()).encode())

    def delete(self, job_id: str) -> None:
        self.record_path(job_id).unlink(missing_ok=True)
        self.result_path(job_id).unlink(missing_ok=True)

    def load_all(self) -> Iterator[JobRecord]:
        for path in sorted((self.root / "records").glob("adjob-*.json")):
            try:
                yield JobRecord.from_json(json.loads(path.read_text()))
            except (OSError, ValueError, TypeError, KeyError) as exc:
                log.error("unreadable job record %s (%s): removed", path.name, type(exc).__name__)
                path.unlink(missing_ok=True)

    def work_dirs(self) -> list[Path]:
        return [p for p in (self.root / "work").iterdir() if p.is_dir()]

    def results(self) -> list[Path]:
        return list((self.root / "results").glob("*.safetensors"))
