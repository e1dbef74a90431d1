"""``splitasr serve`` as operators run it (a subprocess): SIGTERM drains REST requests and gRPC streams
in flight within SPLITASR_SHUTDOWN_GRACE_SECONDS and exits 0; logs are JSON lines with request ids."""

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
from datetime import datetime, timezone
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from splitasr.audio import SAMPLE_RATE_HZ, decode_audio
from splitasr_device._proto import recognizer_pb2 as pb
from splitasr_device._proto import recognizer_pb2_grpc
from tests.integration.conftest import free_port

TOKEN = "lifecycle-token-0123456789"


def long_wav(real_speech, seconds: float = 12.0) -> bytes:
    """Real speech, repeated to ``seconds``: a request that takes the CPU a while to decode (12 s, one
    window: about a second on a fast CPU)."""
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


def serve(cache_root, tmp_path, port: int, grace: float, grpc_port: int = 0) -> tuple[subprocess.Popen, Path]:
    """The server as a subprocess, its stderr (JSON log lines) going to the returned file."""
    env = {**os.environ, "SPLITASR_CACHE_DIR": str(cache_root), "SPLITASR_STORE_DIR": str(tmp_path / "store"),
           "SPLITASR_API_KEYS": f"{TOKEN}:alice", "SPLITASR_PORT": str(port), "SPLITASR_GRPC_PORT": str(grpc_port),
           "SPLITASR_SHUTDOWN_GRACE_SECONDS": str(grace), "SPLITASR_LOG_FORMAT": "json"}
    log = tmp_path / f"server-{port}.log"  # a file, not a pipe: a full pipe would stall the server
    with open(log, "ab") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "splitasr.cli", "serve"], env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=sink)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc, log
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


def start_stream(grpc_port: int, pcm: bytes) -> tuple[threading.Thread, dict, threading.Event, threading.Event]:
    """A StreamingRecognize call that sends half its audio, then waits for ``resume`` to send the rest."""
    outcome: dict = {}
    half_sent, resume = threading.Event(), threading.Event()

    def requests():
        yield pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(
            config=pb.RecognitionConfig(encoding=pb.LINEAR16, sample_rate_hz=SAMPLE_RATE_HZ), interim_results=False))
        half = len(pcm) // 2 // 3200 * 3200
        for i in range(0, len(pcm), 3200):
            if i == half:
                half_sent.set()
                resume.wait(60)
            yield pb.StreamingRecognizeRequest(audio=pcm[i: i + 3200])

    def run() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = recognizer_pb2_grpc.RecognizerStub(channel)
            try:
                outcome["responses"] = list(stub.StreamingRecognize(
                    requests(), metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=120))
            except grpc.RpcError as exc:
                outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome, half_sent, resume


def json_logs(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def log_time(entry: dict) -> float:
    return datetime.strptime(entry["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def test_sigterm_lets_requests_and_streams_in_flight_finish_then_exits_0(tiny_backbone, cache_root, tmp_path,
                                                                          real_speech):
    port, grpc_port = free_port(), free_port()
    proc, log = serve(cache_root, tmp_path, port, grace=30, grpc_port=grpc_port)
    speech = real_speech[0]  # 7 s, "... Dashwood ..."
    pcm = (decode_audio(speech["path"]) * 32767).astype("<i2").tobytes() + b"\0" * 32000  # 1 s of silence after
    try:
        stream, streamed, half_sent, resume = start_stream(grpc_port, pcm)
        assert half_sent.wait(60), "the stream did not start"
        thread, outcome = start_request(port, long_wav(real_speech), "drain-me-1")
        signaled, signaled_at = time.monotonic(), time.time()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        resume.set()  # the stream goes on sending audio after the SIGTERM
        thread.join(60)
        stream.join(60)
        code = proc.wait(60)
        elapsed = time.monotonic() - signaled
    finally:
        resume.set()
        if proc.poll() is None:
            proc.kill()
    stderr = log.read_text()
    assert "responses" in streamed, f"{streamed.get('error')!r}\n{stderr[-2000:]}"
    finals = [r.results[0] for r in streamed["responses"] if r.results and r.results[0].is_final]
    assert finals and "dashwood" in " ".join(f.transcript for f in finals).lower()
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
    # it was in the engine before the SIGTERM and answered after it: drained, not refused
    assert log_time(access) > signaled_at
    assert "Shutting down" in messages
    assert not any("drain-me" in line and "RIFF" in line for line in stderr.splitlines()), "no audio in logs"
    assert all(line.startswith("{") for line in stderr.splitlines() if line.strip()), "every log line is JSON"


def test_sigterm_past_the_grace_period_cancels_and_still_exits_0(tiny_backbone, cache_root, tmp_path, real_speech):
    port = free_port()
    proc, _ = serve(cache_root, tmp_path, port, grace=0.5)
    try:
        # four 30 s windows, decoded one after the other: seconds of work even on a fast CPU
        thread, outcome = start_request(port, long_wav(real_speech, seconds=120.0), "cut-short-1")
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
