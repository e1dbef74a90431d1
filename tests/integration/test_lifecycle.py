"""``splitasr serve`` as operators run it (a subprocess): SIGTERM drains requests in flight within
SPLITASR_SHUTDOWN_GRACE_SECONDS and exits 0; logs are JSON lines carrying the request id.

Not covered here yet: an active gRPC stream during SIGTERM (the gRPC server is not wired into
``splitasr serve`` at the time of writing).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import wave

import httpx
import numpy as np
import pytest

from splitasr.audio import SAMPLE_RATE_HZ, decode_audio
from tests.integration.conftest import free_port

TOKEN = "lifecycle-token-0123456789"


def long_wav(real_speech, seconds: float = 25.0) -> bytes:
    """Real speech, repeated to ``seconds``: a request that takes the CPU a few seconds to decode."""
    clips = [decode_audio(row["path"]) for row in real_speech]
    audio = np.concatenate(clips * int(seconds // sum(len(c) / SAMPLE_RATE_HZ for c in clips) + 1))
    pcm = (np.clip(audio[: int(seconds * SAMPLE_RATE_HZ)], -1, 1) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE_HZ)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def serve(cache_root, tmp_path, port: int, grace: float) -> subprocess.Popen:
    env = {**os.environ, "SPLITASR_CACHE_DIR": str(cache_root), "SPLITASR_STORE_DIR": str(tmp_path / "store"),
           "SPLITASR_API_KEYS": f"{TOKEN}:alice", "SPLITASR_PORT": str(port), "SPLITASR_GRPC_PORT": "0",
           "SPLITASR_SHUTDOWN_GRACE_SECONDS": str(grace), "SPLITASR_LOG_FORMAT": "json"}
    proc = subprocess.Popen([sys.executable, "-m", "splitasr.cli", "serve"], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    pytest.fail("server did not become ready")


def start_request(port: int, audio: bytes, request_id: str) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def post() -> None:
        try:
            outcome["response"] = httpx.post(
                f"http://127.0.0.1:{port}/v1/audio/transcriptions", files={"file": ("long.wav", audio)},
                data={"model": "tiny.en"}, timeout=120,
                headers={"Authorization": f"Bearer {TOKEN}", "X-Request-ID": request_id})
        except httpx.HTTPError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=post)
    thread.start()
    # SIGTERM only once the request is queued or decoding in the engine
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        if "splitasr_queue_depth 1.0" in metrics:
            return thread, outcome
        time.sleep(0.05)
    pytest.fail("the request never reached the engine")


def json_logs(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_sigterm_lets_the_request_in_flight_finish_then_exits_0(tiny_backbone, cache_root, tmp_path, real_speech):
    port = free_port()
    proc = serve(cache_root, tmp_path, port, grace=30)
    try:
        thread, outcome = start_request(port, long_wav(real_speech), "drain-me-1")
        signaled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        thread.join(60)
        code = proc.wait(60)
        elapsed = time.monotonic() - signaled
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = proc.stderr.read()
    assert "response" in outcome, f"{outcome.get('error')!r}\n{stderr[-2000:]}"
    response = outcome["response"]
    assert response.status_code == 200 and response.json()["text"].strip(), response.text
    assert response.headers["x-request-id"] == "drain-me-1"
    assert code == 0, stderr[-2000:]
    assert elapsed < 30
    logs = json_logs(stderr)
    messages = [entry["message"] for entry in logs]
    access = next(e for e in logs if e.get("logger") == "splitasr.access" and e.get("request_id") == "drain-me-1")
    assert access["status"] == 200 and access["route"] == "/v1/audio/transcriptions"
    # the request finished after the shutdown began: it was drained, not refused
    assert messages.index("Shutting down") < messages.index(access["message"])
    assert all(line.startswith("{") for line in stderr.splitlines() if line.strip()), "every log line is JSON"


def test_sigterm_past_the_grace_period_cancels_and_still_exits_0(tiny_backbone, cache_root, tmp_path, real_speech):
    port = free_port()
    proc = serve(cache_root, tmp_path, port, grace=0.5)
    try:
        thread, outcome = start_request(port, long_wav(real_speech, seconds=60), "cut-short-1")
        signaled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        elapsed = time.monotonic() - signaled
        thread.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0
    assert "error" in outcome or outcome["response"].status_code >= 500
    # the grace period, plus at most the batch that was already running on the model
    assert elapsed < 30
