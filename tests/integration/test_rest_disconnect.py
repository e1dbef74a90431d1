"""A client that hangs up stops its decode: the request leaves the decode worker, others go on."""

from __future__ import annotations

import socket
import time
import uuid

import httpx

from tests.integration.conftest import TOKENS
from tests.integration.long_audio import long_speech_flac

AUTH = f"Bearer {TOKENS['alice']}"


def _multipart(audio: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\ntiny.en\r\n'.encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="long.flac"\r\n'
        "Content-Type: audio/flac\r\n\r\n".encode() + audio + b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    return b"".join(parts), boundary


def _wait(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_a_client_that_hangs_up_cancels_its_decode(rest_server, real_speech):
    goforward = next(r for r in real_speech if r["audio_filepath"].endswith("goforward.flac"))
    worker = rest_server.engine.worker
    body, boundary = _multipart(long_speech_flac(goforward["path"], 300))  # 10 windows: a minute of work or more
    cancelled = worker.stats.cancelled
    host, port = rest_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: {host}\r\nAuthorization: {AUTH}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body)
        assert _wait(lambda: worker.stats.steps > 0 and worker.live_rows > 0, 60), "the decode never started"
    # the socket is closed: the server notices, cancels, and the rows leave the batch
    assert _wait(lambda: worker.stats.cancelled > cancelled, 30), "the hung-up request was not cancelled"
    assert _wait(lambda: worker.live_rows == 0, 30), "its rows stayed in the batch"
    # the server still serves everyone else
    with open(goforward["path"], "rb") as fh:
        reply = httpx.post(f"{rest_server.url}/v1/audio/transcriptions", files={"file": ("a.flac", fh.read())},
                           data={"model": "tiny.en"}, headers={"Authorization": AUTH}, timeout=120)
    assert reply.status_code == 200 and "forward" in reply.json()["text"].lower()
