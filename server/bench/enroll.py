"""Enrollment by a training job, measured the way an operator sees it.

A real server (REST on loopback, the backbone, one training worker with ``SPLITASR_TRAIN_THREADS``)
gets one synthetic speaker's training utterances (``splitasr synth``) as a job, once per target preset.
Reported per preset:

- ``job_wall_s``: from the upload's answer to the job's end (queue, worker start-up, features, training,
  dev decoding, storing); ``worker_wall_s`` / ``worker_cpu_s``: the training itself inside the worker;
- ``peak_rss_gib``: the training worker's peak resident memory during that job;
- ``test_wer_base`` / ``test_wer_adapted`` and ``relative_wer_reduction`` on the speaker's held-out
  sentences (never uploaded), transcribed through the server;
- ``plain_latency_alone_p50_s`` / ``plain_latency_during_job_p50_s``: one plain transcription at a time
  (the real-speech fixtures, no adapter) before any job and while this one trains.

The machine's load average and CPU model are included: on a shared machine, compare figures measured
in one run.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from ..config import Settings
from .common import cpu_model, free_port

DEFAULT_AUDIO_DIR = Path(__file__).resolve().parents[2] / "tests" / "data" / "real-speech"
JOBS = "/v1/adapters/jobs"




class _Server:
    """The REST app over an engine and a job manager, uvicorn in a thread."""

    def __init__(self, settings: Settings):
        import uvicorn

        from ..api.rest.app import create_app
        from ..engine.engine import Engine
        from ..jobs import JobManager

        self.engine = Engine(settings)
        self.engine.load()
        self.jobs = JobManager(settings, self.engine)
        config = uvicorn.Config(create_app(settings, self.engine, jobs=self.jobs), host="127.0.0.1",
                                port=settings.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{settings.port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the server did not become ready")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        self.engine.close(10)


def _transcribe(url: str, path: Path, model: str) -> tuple[str, float]:
    start = time.perf_counter()
    with path.open("rb") as f:
        response = httpx.post(f"{url}/v1/audio/transcriptions", files={"file": (path.name, f)},
                              data={"model": model}, timeout=300)
    response.raise_for_status()
    return response.json()["text"], time.perf_counter() - start


def _wer(url: str, rows: list[dict], folder: Path, model: str) -> float:
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    from ..scoring import wer

    norm = EnglishTextNormalizer({})
    hyps = [_transcribe(url, folder / r["audio_filepath"], model)[0] for r in rows]
    return wer([norm(r["text"]) for r in rows], [norm(h) for h in hyps])


def _rows(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]


def _submit(url: str, manifest: Path, name: str, targets: str, epochs: int) -> dict:
    folder = manifest.parent
    files = [("manifest", ("train.jsonl", manifest.read_bytes()))]
    files += [("file", (Path(r["audio_filepath"]).name, (folder / r["audio_filepath"]).read_bytes()))
              for r in _rows(manifest)]
    response = httpx.post(f"{url}{JOBS}", files=files, timeout=300,
                          data={"name": name, "targets": targets, "epochs": str(epochs), "dev": "0.2"})
    response.raise_for_status()
    return response.json()


def _follow(url: str, job_id: str, plain: list[Path]) -> tuple[dict, list[float]]:
    """Wait for the job's end; meanwhile one plain request at a time while it trains."""
    latencies: list[float] = []
    index = 0
    while True:
        job = httpx.get(f"{url}{JOBS}/{job_id}", timeout=30).json()
        if job["status"] not in ("queued", "running"):
            return job, latencies
        if job["progress"].get("stage") in ("preparing", "training"):
            latencies.append(_transcribe(url, plain[index % len(plain)], "tiny.en")[1])
            index += 1
        else:
            time.sleep(0.5)


def _p50(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def run(*, speaker: str = "cardio_nurse", utterances: int = 40, test: int = 35, targets: list[str] | None = None,
        epochs: int = 10, threads: int = 1, backbone: str = "tiny.en", cache_dir: Path,
        audio_dir: Path = DEFAULT_AUDIO_DIR, work_dir: Path | None = None) -> dict:
    from ..datasets import synth

    targets = targets or ["decoder", "all"]
    plain = sorted(p for p in audio_dir.rglob("*") if p.suffix in (".flac", ".wav"))
    with tempfile.TemporaryDirectory(prefix="splitasr-bench-enroll-") as tmp:
        root = Path(work_dir or tmp)
        manifests = synth.synthesize_speaker(speaker, root / "data", splits=(utterances, 0, test), seed=0)
        settings = Settings(backbone=backbone, cache_dir=cache_dir, store_dir=root / "store", jobs_dir=root / "jobs",
                            port=free_port(), grpc_port=0, train_threads=threads,
                            train_max_epochs=max(20, epochs), train_max_job_seconds=6 * 3600, _env_file=None)
        result: dict = {"speaker": speaker, "backbone": backbone, "uploaded_utterances": utterances,
                        "test_utterances": test, "epochs_max": epochs, "train_threads": threads,
                        "cpu": cpu_model(), "cpus": os.cpu_count(), "load_average_start": os.getloadavg()}
        server = _Server(settings)
        try:
            test_rows = _rows(manifests["test"])
            result["test_wer_base"] = round(_wer(server.url, test_rows, manifests["test"].parent, "tiny.en"), 4)
            alone = [_transcribe(server.url, p, "tiny.en")[1] for p in plain * 2]
            result["plain_latency_alone_p50_s"] = _p50(alone)
            result["presets"] = {}
            for preset in targets:
                result["presets"][preset] = _one_preset(server, manifests, preset, epochs, plain, result)
        finally:
            server.stop()
        result["load_average_end"] = os.getloadavg()
    return result


def _one_preset(server: _Server, manifests: dict[str, Path], preset: str, epochs: int, plain: list[Path],
                result: dict) -> dict:
    name = f"bench-{preset}".replace(",", "-")
    started = time.perf_counter()
    job = _submit(server.url, manifests["train"], name, preset, epochs)
    job, during = _follow(server.url, job["id"], plain)
    wall = time.perf_counter() - started
    if job["status"] != "succeeded":
        return {"status": job["status"], "error": job["error"], "job_wall_s": round(wall, 1)}
    metrics = job["metrics"]
    adapted = _wer(server.url, _rows(manifests["test"]), manifests["test"].parent, name)
    base = result["test_wer_base"]
    return {
        "status": job["status"],
        "job_wall_s": round(wall, 1),
        "worker_wall_s": metrics["wall_seconds"],
        "worker_cpu_s": metrics["cpu_seconds"],
        "peak_rss_gib": round(metrics["peak_rss_bytes"] / 2**30, 3),
        "epochs_run": metrics["epochs_run"],
        "best_epoch": metrics["best_epoch"],
        "dev_wer_before": metrics.get("dev_before"),
        "dev_wer_after": metrics.get("dev_after"),
        "test_wer_adapted": round(adapted, 4),
        "relative_wer_reduction": round((base - adapted) / base, 4) if base else None,
        "adapter_bytes": job["result"]["bytes"],
        "plain_requests_during_job": len(during),
        "plain_latency_during_job_p50_s": _p50(during),
        "plain_latency_ratio_during_vs_alone": (round(_p50(during) / result["plain_latency_alone_p50_s"], 2)
                                                if during else None),
    }
