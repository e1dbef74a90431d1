"""Enrollment from the device: send recordings once, let the server train the adapter, keep the file.

The device needs no torch and decodes nothing: each recording goes to the server as the bytes of its
file (WAV, FLAC, MP3 ... the server decodes them). The manifest is NeMo-style JSONL, one line per
recording with ``audio_filepath`` (relative to the manifest's folder, or absolute) and ``text``; it is
sent as it is, and each recording is named by its ``audio_filepath`` exactly as the line writes it.
The adapter file is written atomically (temp file in the same folder, fsync, rename) and only after
its size and sha256 match what the server reported, so ``out`` is either the old file or the new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ._proto import trainer_pb2
from .errors import DeviceError

UPLOAD_CHUNK_BYTES = 256 * 1024
STATUS_NAMES = {v: k.lower() for k, v in trainer_pb2.JobStatus.items()}


class TrainingFailed(DeviceError):
    """The server's training job failed or was cancelled; ``code`` is the server's reason code."""

    def __init__(self, message: str, code: str = "", job_id: str = ""):
        super().__init__(message)
        self.code = code
        self.job_id = job_id


@dataclass(frozen=True)
class Recording:
    name: str  # the manifest's audio_filepath, as written
    path: Path  # where the file is on this device
    size: int


@dataclass(frozen=True)
class TrainingEvent:
    """One step of a job's life, as the server reported it."""

    job_id: str
    type: str  # status, stage, step, epoch, message; "upload" while the recordings are being sent
    message: str
    status: str  # queued, running, succeeded, failed, cancelled ("uploading" during the upload)
    stage: str
    fraction: float  # of the upload ("upload"), else of the training steps
    epoch: int = 0
    epochs: int = 0


@dataclass(frozen=True)
class JobInfo:
    """A training job's state on the server."""

    id: str
    status: str  # queued, running, succeeded, failed, cancelled
    stage: str
    fraction: float
    error: str  # the reason, when failed
    result_sha256: str  # set once succeeded


def job_info(job: trainer_pb2.TrainingJob) -> JobInfo:
    return JobInfo(job.id, STATUS_NAMES.get(job.status, "unknown"), job.progress.stage, job.progress.fraction,
                   job.error.message, job.result.sha256)


@dataclass(frozen=True)
class TrainedAdapter:
    """What ``SplitASRClient.train`` produced."""

    path: Path
    sha256: str
    size: int
    kind: str
    job_id: str
    stored_as: str | None  # the adapter's name on the server, None when it kept nothing (store=false)
    dev_metric: str
    dev_before: float | None  # on the held-out share: the backbone alone
    dev_after: float | None  # ... and with this adapter
    seconds: float  # the job's training time on the server


def read_recordings(manifest: Path) -> tuple[bytes, list[Recording]]:
    """The manifest's bytes and the distinct recordings its lines name (checked to exist here)."""
    if not manifest.is_file():
        raise DeviceError(f"manifest {manifest} does not exist")
    data = manifest.read_bytes()
    recordings: dict[str, Recording] = {}
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            name = row["audio_filepath"]
        except (ValueError, KeyError, TypeError):
            raise DeviceError(f"{manifest}:{number}: not a JSON object with audio_filepath") from None
        if not isinstance(name, str) or not name:
            raise DeviceError(f"{manifest}:{number}: audio_filepath must be a non-empty string")
        path = Path(name).expanduser()
        path = path if path.is_absolute() else manifest.parent / path
        if not path.is_file():
            raise DeviceError(f"{manifest}:{number}: recording {name!r} not found (looked at {path})")
        recordings.setdefault(name, Recording(name, path, path.stat().st_size))
    if not recordings:
        raise DeviceError(f"manifest {manifest} names no recordings")
    return data, list(recordings.values())


def upload_requests(config: trainer_pb2.JobConfig, recordings: list[Recording],
                    progress: Callable[[int, int], None] | None = None) -> Iterator[trainer_pb2.CreateJobRequest]:
    """CreateJob's messages: the config, then each recording's header and chunks."""
    total = len(config.manifest) + sum(r.size for r in recordings)
    sent = len(config.manifest)
    yield trainer_pb2.CreateJobRequest(config=config)
    for recording in recordings:
        yield trainer_pb2.CreateJobRequest(
            recording=trainer_pb2.RecordingHeader(name=recording.name, size=recording.size))
        with recording.path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(UPLOAD_CHUNK_BYTES), b""):
                sent += len(chunk)
                yield trainer_pb2.CreateJobRequest(chunk=chunk)
                if progress is not None:
                    progress(sent, total)


def event_from(message: trainer_pb2.JobEvent) -> TrainingEvent:
    job = message.job
    return TrainingEvent(job.id, message.type, message.message, STATUS_NAMES.get(message.status, "unknown"),
                         job.progress.stage, message.fraction, job.progress.epoch, job.progress.epochs)


def check_succeeded(job: trainer_pb2.TrainingJob) -> None:
    status = STATUS_NAMES.get(job.status, "unknown")
    if status == "succeeded":
        return
    if status == "cancelled":
        raise TrainingFailed(f"training job {job.id} was cancelled", "cancelled", job.id)
    raise TrainingFailed(f"training job {job.id} {status}: {job.error.message or 'no reason given'}",
                         job.error.code, job.id)


def write_atomically(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def keep_adapter(out: Path, job: trainer_pb2.TrainingJob, data: bytes) -> TrainedAdapter:
    """Check the downloaded bytes against the job's result, then write ``out``."""
    sha256 = hashlib.sha256(data).hexdigest()
    if len(data) != job.result.size or sha256 != job.result.sha256:
        raise DeviceError(f"the adapter download is corrupt ({len(data)} bytes, sha256 {sha256[:12]}...; the "
                          f"server announced {job.result.size} bytes, {job.result.sha256[:12]}...); {out} unchanged")
    write_atomically(out, data)
    metrics = job.metrics
    return TrainedAdapter(out, sha256, len(data), job.result.kind, job.id, job.result.name or None,
                          metrics.dev_metric, metrics.dev_before if metrics.HasField("dev_before") else None,
                          metrics.dev_after if metrics.HasField("dev_after") else None, metrics.wall_seconds)
