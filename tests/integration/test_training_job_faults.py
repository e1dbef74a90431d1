"""Training jobs that end badly: cancelled mid-training, a worker killed, the server killed and restarted.

In each case the job ends with a reason, its recordings are deleted, and no adapter (whole or partial)
is stored or can be downloaded. Each needs a real job to be running, so all are slow.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from .conftest import TOKENS, free_port
from .jobs_server import JOBS, JobsServer, manifest_bytes, needs_tts, post_job, recordings

pytestmark = [pytest.mark.slow, needs_tts]


def _training(job: dict) -> bool:
    return job["progress"].get("stage") == "training" and job["progress"].get("step", 0) >= 1


def _assert_nothing_kept(server: JobsServer, job: dict, name: str, tenant: str = "alice") -> None:
    assert server.work_dirs() == []
    names = [a["id"] for a in httpx.get(f"{server.url}/v1/adapters", headers=server.headers(tenant)).json()["data"]]
    assert name not in names
    content = httpx.get(f"{server.url}{JOBS}/{job['id']}/content", headers=server.headers(tenant))
    assert content.status_code == 400 and "an adapter exists only once it succeeded" in content.json()["error"]["message"]


def test_a_killed_worker_fails_the_job_and_the_next_job_gets_a_new_worker(jobs_server, speaker):
    rows = speaker.rows()
    job = post_job(jobs_server, manifest_bytes(rows), recordings(speaker, rows),
                   {"epochs": "20", "dev": "0", "name": "crashed"}).json()
    jobs_server.wait(job["id"], _training)
    [pid] = jobs_server.jobs.worker_pids()
    os.kill(pid, signal.SIGKILL)
    failed = jobs_server.wait(job["id"], lambda j: j["status"] != "running", timeout=30)
    assert failed["status"] == "failed" and failed["error"]["code"] == "worker_died"
    assert "killed by SIGKILL" in failed["error"]["message"] and "no adapter was kept" in failed["error"]["message"]
    _assert_nothing_kept(jobs_server, failed, "crashed")

    # cancel mid-training, on the fresh worker the next job starts
    job = post_job(jobs_server, manifest_bytes(rows), recordings(speaker, rows),
                   {"epochs": "20", "dev": "0", "name": "cancelled"}).json()
    jobs_server.wait(job["id"], _training)
    assert jobs_server.jobs.worker_pids() != [pid]
    start = time.monotonic()
    cancelled = httpx.post(f"{jobs_server.url}{JOBS}/{job['id']}/cancel", headers=jobs_server.headers(),
                           timeout=60).json()
    assert cancelled["status"] == "cancelled" and time.monotonic() - start < 15
    assert cancelled["progress"]["step"] < cancelled["progress"]["steps"]
    _assert_nothing_kept(jobs_server, cancelled, "cancelled")
    assert len(jobs_server.jobs.worker_pids()) == 1  # it stopped at a step: the worker lives on


def _serve(cache_root, root, port: int) -> subprocess.Popen:
    env = {**os.environ, "SPLITASR_CACHE_DIR": str(cache_root), "SPLITASR_STORE_DIR": str(root / "store"),
           "SPLITASR_JOBS_DIR": str(root / "jobs"), "SPLITASR_API_KEYS": f"{TOKENS['alice']}:alice",
           "SPLITASR_PORT": str(port), "SPLITASR_GRPC_PORT": "0", "SPLITASR_ADAPTER_SLOTS": "2"}
    with open(root / f"server-{port}.log", "ab") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "splitasr.cli", "serve"], env=env,
                                stdout=subprocess.DEVNULL, stderr=sink)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, (root / f"server-{port}.log").read_text()[-2000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    pytest.fail("server did not become ready")


def test_a_server_killed_mid_job_marks_it_failed_on_restart(cache_root, speaker, tmp_path):
    port = free_port()
    # a server in a child process: only its url, the headers and wait() of JobsServer are used here
    server = JobsServer(f"http://127.0.0.1:{port}", "", None, None, None)  # type: ignore[arg-type]
    work = tmp_path / "jobs" / "work"
    proc = _serve(cache_root, tmp_path, port)
    try:
        rows = speaker.rows()
        job = post_job(server, manifest_bytes(rows), recordings(speaker, rows),
                       {"epochs": "20", "dev": "0", "name": "interrupted"}).json()
        server.wait(job["id"], _training)
        workers = psutil.Process(proc.pid).children()
        assert len(workers) >= 1 and len(list(work.iterdir())) == 1
        proc.kill()
        proc.wait(30)
        _, alive = psutil.wait_procs(workers, timeout=15)
        assert alive == [], "the training worker outlived the server"
        assert len(list(work.iterdir())) == 1  # the crash left the recordings: the restart must delete them
    finally:
        proc.kill()
    proc = _serve(cache_root, tmp_path, port)
    try:
        assert list(work.iterdir()) == []
        failed = httpx.get(f"{server.url}{JOBS}/{job['id']}", headers=server.headers()).json()
        assert failed["status"] == "failed" and failed["error"]["code"] == "server_restarted"
        assert "restarted while it was running" in failed["error"]["message"]
        assert failed["result"] is None
        names = [a["id"] for a in httpx.get(f"{server.url}/v1/adapters", headers=server.headers()).json()["data"]]
        assert "interrupted" not in names
        blobs = list((tmp_path / "store" / "blobs").rglob("*.safetensors"))
        assert blobs == []
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
