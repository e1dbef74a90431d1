"""What clients see of a job: the JSON object the REST API returns (and the gRPC messages mirror)."""

from __future__ import annotations

from typing import Any

from .records import JobRecord


def _seconds(value: float | None) -> int | None:
    return None if value is None else int(value)


def job_view(job: JobRecord) -> dict[str, Any]:
    """The job as the API shows it (shaped like OpenAI's fine-tuning job object)."""
    return {
        "object": "adapter.job",
        "id": job.id,
        "status": job.status,
        "created_at": _seconds(job.created_at),
        "started_at": _seconds(job.started_at),
        "finished_at": _seconds(job.finished_at),
        "name": job.name,
        "store": job.store,
        "hyperparameters": job.parameters.to_dict(),
        "training_data": {"utterances": job.utterances, "audio_seconds": job.audio_seconds,
                          "train_utterances": job.train_utterances, "dev_utterances": job.dev_utterances,
                          "upload_bytes": job.upload_bytes},
        "progress": dict(job.progress),
        "metrics": dict(job.metrics),
        "result": dict(job.result) if job.result else None,
        "error": dict(job.error) if job.error else None,
    }
