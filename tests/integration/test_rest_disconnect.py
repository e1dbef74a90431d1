"""A client that hangs up stops its decode: the request leaves the decode worker, others go on."""

from __future__ import annotations

import socket

import httpx

from tests.integration.abandoned import long_speech_flac, multipart, post_transcription, wait_until
from tests.integration.conftest import TOKENS

AUTH = f"Bearer {TOKENS['alice']}"


def test_a_client_that_hangs_up_cancels_its_decode(rest_server, real_speech):
    goforward = next(r for r in real_speech if r["audio_filepath"].endswith("goforward.flac"))
    worker = rest_server.engine.worker
    form = multipart(long_speech_flac(goforward["path"], 300))  # 10 windows: a minute of work or more
    cancelled = worker.stats.cancelled
    host, port = rest_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        post_transcription(sock, host, AUTH, form)
        assert wait_until(lambda: worker.stats.steps > 0 and worker.live_rows > 0, 60), "the decode never started"
    # the socket is closed: the server notices, cancels, and the rows leave the batch
    assert wait_until(lambda: worker.stats.cancelled > cancelled, 30), "the hung-up request was not cancelled"
    assert wait_until(lambda: worker.live_rows == 0, 30), "its rows stayed in the batch"
    # the server still serves everyone else
    with open(goforward["path"], "rb") as fh:
        reply = httpx.post(f"{rest_server.url}/v1/audio/transcriptions", files={"file": ("a.flac", fh.read())},
                           data={"model": "tiny.en"}, headers={"Authorization": AUTH}, timeout=120)
    assert reply.status_code == 200 and "forward" in reply.json()["text"].lower()
