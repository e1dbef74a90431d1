"""A real server for training jobs: REST (uvicorn in a thread) and gRPC (its own loop) over one engine and
one job manager, with two tenants, its own jobs and store folders, and one training worker process.

Also the data the job tests upload: one synthetic speaker (``splitasr synth``'s cardio_nurse, espeak-ng +
sox), 12 training utterances and 3 held-out ones, rendered once per session.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from splitasr.api.rpc.server import BackgroundGrpc
from splitasr.backbones.whisper import WhisperBackbone
from splitasr.config import Settings
from splitasr.engine.engine import Engine
from splitasr.jobs import JobManager

from .conftest import TOKENS, free_port, start_server

SPEAKER = "cardio_nurse"
JOBS = "/v1/adapters/jobs"
needs_tts = pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("sox")),
                               reason="needs espeak-ng and sox (scripts/install-system-deps.sh)")


@dataclass
class Speaker:
    folder: Path
    train: Path  # manifest of 12 utterances
    test: Path  # manifest of 3 held-out utterances

    def rows(self, which: str = "train") -> list[dict]:
        manifest = self.train if which == "train" else self.test
        return [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]

    def audio(self, row: dict) -> Path:
        return self.folder / row["audio_filepath"]


@dataclass
class JobsServer:
    url: str
    grpc_address: str
    engine: Engine
    jobs: JobManager
    settings: Settings

    def headers(self, tenant: str = "alice") -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKENS[tenant]}"}

    def work_dirs(self) -> list[Path]:
        return sorted((self.settings.training_jobs_dir / "work").iterdir())

    def wait(self, job_id: str, predicate, timeout: float = 300, tenant: str = "alice") -> dict:
        """Poll the job until ``predicate(job)`` holds; fails the test on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = httpx.get(f"{self.url}/v1/adapters/jobs/{job_id}", headers=self.headers(tenant), timeout=10).json()
            if predicate(job):
                return job
            time.sleep(0.2)
        pytest.fail(f"job {job_id} never reached the expected state; last: {job['status']} {job['progress']}")


@pytest.fixture(scope="session")
def speaker(tmp_path_factory) -> Speaker:
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.skip("needs espeak-ng and sox (scripts/install-system-deps.sh)")
    from splitasr.datasets import synth

    folder = tmp_path_factory.mktemp("speaker")
    manifests = synth.synthesize_speaker(SPEAKER, folder, splits=(12, 0, 3), seed=0)
    return Speaker(folder, manifests["train"], manifests["test"])


def jobs_settings(cache_root: Path, root: Path, **overrides) -> Settings:
    values = {"host": "127.0.0.1", "port": free_port(), "cache_dir": cache_root, "store_dir": root / "store",
              "jobs_dir": root / "jobs", "api_keys": ",".join(f"{t}:{n}" for n, t in TOKENS.items()),
              "adapter_slots": 4, "adapter_targets": "decoder", "max_upload_bytes": 4 * 1024 * 1024,
              "train_max_upload_bytes": 16 * 1024 * 1024, "train_max_utterances": 40,
              "train_max_audio_seconds": 200, "train_worker_idle_seconds": 900}
    return Settings(**{**values, **overrides}, _env_file=None)


@pytest.fixture(scope="session")
def jobs_server(backbone_cache_dir, cache_root, tmp_path_factory) -> Iterator[JobsServer]:
    settings = jobs_settings(cache_root, tmp_path_factory.mktemp("jobs-server"))
    # its own backbone: the engine's slot pool owns the adapter bank of the model it serves
    engine = Engine(settings, backbone=WhisperBackbone.load("tiny.en", cache_dir=backbone_cache_dir, device="cpu"))
    engine.load()
    jobs = JobManager(settings, engine)
    server, thread = start_server(settings, engine, jobs=jobs)
    grpc = BackgroundGrpc(settings, engine, jobs=jobs)
    url = f"http://127.0.0.1:{settings.port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    yield JobsServer(url, grpc.address, engine, jobs, settings)
    grpc.stop()
    server.should_exit = True
    thread.join(30)
    engine.close(10)


def manifest_bytes(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def recordings(speaker: Speaker, rows: list[dict]) -> dict[str, bytes]:
    return {speaker.audio(r).name: speaker.audio(r).read_bytes() for r in rows}


def post_job(server: JobsServer, manifest: bytes | None, parts: dict[str, bytes], fields: dict | None = None,
             tenant: str = "alice") -> httpx.Response:
    files = [("manifest", ("manifest.jsonl", manifest, "application/x-ndjson"))] if manifest is not None else []
    files += [("file", (name, data, "application/octet-stream")) for name, data in parts.items()]
    return httpx.post(f"{server.url}{JOBS}", headers=server.headers(tenant), files=files,
                      data={"epochs": "1", "name": "v", **(fields or {})}, timeout=120)


class EventReader(threading.Thread):
    """Reads a job's server-sent events until the stream ends."""

    def __init__(self, server: JobsServer, job_id: str, after: int = 0):
        super().__init__(daemon=True)
        self.url = f"{server.url}{JOBS}/{job_id}/events"
        self.headers = {**server.headers(), **({"Last-Event-ID": str(after)} if after else {})}
        self.events: list[dict] = []
        self.ids: list[int] = []

    def run(self) -> None:
        with httpx.stream("GET", self.url, headers=self.headers, timeout=httpx.Timeout(10, read=120)) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("data: "):
                    self.events.append(json.loads(line[6:]))
                elif line.startswith("id: "):
                    self.ids.append(int(line[4:]))


def transcribe(server: JobsServer, path, model: str) -> tuple[str, float]:
    start = time.perf_counter()
    with open(path, "rb") as f:
        response = httpx.post(f"{server.url}/v1/audio/transcriptions", headers=server.headers(),
                              files={"file": (path.name, f)}, data={"model": model}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()["text"], time.perf_counter() - start


@pytest.fixture(scope="session")
def trained_job(jobs_server, speaker):
    """Alice's job: 12 utterances, all trained on (dev=0), 2 epochs; observed while it runs."""
    rows = speaker.rows()
    response = post_job(jobs_server, manifest_bytes(rows), recordings(speaker, rows),
                        {"epochs": "2", "dev": "0", "name": "alice-voice"})
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] in ("queued", "running") and job["training_data"]["utterances"] == 12
    reader = EventReader(jobs_server, job["id"])
    reader.start()
    seen: dict = {"work_files": [], "queued": None, "third": None, "cancelled": None}
    running = jobs_server.wait(job["id"], lambda j: j["progress"].get("stage") in ("preparing", "training"))
    seen["work_files"] = sorted(p.name for p in (jobs_server.work_dirs()[0] / "audio").iterdir())
    # a plain request completes while the job trains
    seen["transcription"] = transcribe(jobs_server, speaker.audio(speaker.rows("test")[0]), "tiny.en")
    seen["status_after_transcription"] = jobs_server.jobs.get("alice", job["id"])["status"]
    # a second job waits in the queue (one worker) and is cancelled there; a third is over the tenant's limit
    second = post_job(jobs_server, manifest_bytes(rows), recordings(speaker, rows), {"name": "alice-2"})
    seen["queued"] = second.json()
    seen["third"] = post_job(jobs_server, manifest_bytes(rows), recordings(speaker, rows), {"name": "alice-3"})
    seen["work_dirs_with_queued"] = len(jobs_server.work_dirs())
    cancel = httpx.post(f"{jobs_server.url}{JOBS}/{second.json()['id']}/cancel", headers=jobs_server.headers())
    seen["cancelled"] = cancel.json()
    seen["work_dirs_after_cancel"] = len(jobs_server.work_dirs())
    done = jobs_server.wait(job["id"], lambda j: j["status"] not in ("queued", "running"))
    reader.join(60)
    return {"job": done, "running": running, "events": reader.events, "ids": reader.ids, **seen}
