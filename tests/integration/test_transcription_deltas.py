"""``stream=true`` sends text while the decode loop produces it: token by token for greedy decoding,
the deltas concatenate exactly to the final text, and a client that hangs up stops the decode.

Everything runs on the real server (uvicorn on loopback, real tiny.en weights, real speech)."""

from __future__ import annotations

import json
import socket
import threading

import httpx
import numpy as np
from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

from splitasr.audio import SAMPLE_RATE_HZ, decode_audio, encode_wav_pcm16
from splitasr.scoring import wer

from .abandoned import long_speech_flac, multipart, post_transcription, wait_until
from .test_rest_disconnect import AUTH

normalize = EnglishTextNormalizer({})
PAUSE_AFTER_STEPS = 12  # the worker stops here until the client has read a delta


def _clip(real_speech, name: str) -> dict:
    return next(r for r in real_speech if r["audio_filepath"] == name)


def _ten_seconds(real_speech) -> tuple[bytes, str]:
    """About 10 s of real speech (two sentences, half a second apart): one Whisper window."""
    rows = [_clip(real_speech, "librivox/0870.flac"), _clip(real_speech, "librivox/0880.flac")]
    gap = np.zeros(SAMPLE_RATE_HZ // 2, np.float32)
    audio = np.concatenate([decode_audio(rows[0]["path"]), gap, decode_audio(rows[1]["path"])])
    return encode_wav_pcm16(audio), " ".join(r["text"] for r in rows)


def _events(response: httpx.Response, on_delta=None) -> list[dict]:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            event = json.loads(line[6:])
            if event["type"] == "transcript.text.delta" and on_delta is not None:
                on_delta(event)
            events.append(event)
    return events


def test_text_arrives_token_by_token_while_the_clip_decodes(rest_server, real_speech):
    data, reference = _ten_seconds(real_speech)
    worker = rest_server.engine.worker
    base = worker.stats.steps
    read_a_delta, paused = threading.Event(), threading.Event()
    seen: dict[str, object] = {}
    hook = worker._on_step

    def on_step(rows: int, seconds: float) -> None:  # the worker's own per-step callback, observed
        if hook:
            hook(rows, seconds)
        if not paused.is_set() and worker.stats.steps >= base + PAUSE_AFTER_STEPS:
            paused.set()  # a step boundary mid-decode: nothing more is decoded until the client read text
            seen["released_by_client"] = read_a_delta.wait(120)

    def on_delta(event: dict) -> None:
        if not read_a_delta.is_set():
            seen["rows_live_at_first_delta"] = worker.live_rows
            read_a_delta.set()

    worker._on_step = on_step
    try:
        with httpx.stream("POST", f"{rest_server.url}/v1/audio/transcriptions", files={"file": ("ten.wav", data)},
                          data={"model": "tiny.en", "stream": "true"}, headers=rest_server.headers(),
                          timeout=300) as response:
            assert response.status_code == 200
            events = _events(response, on_delta)
    finally:
        worker._on_step = hook
    *deltas, done = events
    assert done["type"] == "transcript.text.done" and all(e["type"] == "transcript.text.delta" for e in deltas)
    # the first text reached the client while its decode was held at a step boundary: it was sent as
    # decoded, not when the window was done
    assert seen.get("released_by_client") is True and seen["rows_live_at_first_delta"] >= 1
    assert worker.stats.steps - base > PAUSE_AFTER_STEPS + 10  # and the decode went on well past the pause
    # token by token: many more deltas than the clip's two sentences
    assert len(deltas) >= 10, deltas
    assert "".join(e["delta"] for e in deltas) == done["text"]
    assert wer([normalize(reference)], [normalize(done["text"])]) <= 0.15, done["text"]


def test_streamed_text_equals_the_plain_transcription(rest_server, real_speech):
    """Same decode, same text: the deltas of each clip concatenate to what the plain request returns."""
    for name in ("librivox/0920.flac", "cards/005.flac"):
        audio = _clip(real_speech, name)["path"].read_bytes()
        plain = httpx.post(f"{rest_server.url}/v1/audio/transcriptions", files={"file": ("a.flac", audio)},
                           data={"model": "tiny.en"}, headers=rest_server.headers(), timeout=120)
        with httpx.stream("POST", f"{rest_server.url}/v1/audio/transcriptions", files={"file": ("a.flac", audio)},
                          data={"model": "tiny.en", "stream": "true"}, headers=rest_server.headers(),
                          timeout=120) as response:
            *deltas, done = _events(response)
        assert len(deltas) >= 3
        assert "".join(e["delta"] for e in deltas) == done["text"] == plain.json()["text"]


def test_beam_search_streams_whole_windows(rest_server, real_speech):
    """Beam search ranks whole hypotheses: its text is sent when the window is decoded."""
    audio = _clip(real_speech, "librivox/0870.flac")["path"].read_bytes()
    with httpx.stream("POST", f"{rest_server.url}/v1/audio/transcriptions", files={"file": ("a.flac", audio)},
                      data={"model": "tiny.en", "stream": "true", "beam_size": "3"}, headers=rest_server.headers(),
                      timeout=120) as response:
        *deltas, done = _events(response)
    assert len(deltas) == 1 and deltas[0]["delta"] == done["text"] and "dashwood" in done["text"].lower()


def test_a_client_that_hangs_up_mid_stream_stops_the_decode(rest_server, real_speech):
    goforward = _clip(real_speech, "misc/goforward.flac")
    worker = rest_server.engine.worker
    form = multipart(long_speech_flac(goforward["path"], 300), stream="true")  # a minute of work or more
    cancelled = worker.stats.cancelled
    host, port = rest_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        post_transcription(sock, host, AUTH, form)
        received = b""
        while b'"transcript.text.delta"' not in received:  # the stream has begun: text is arriving
            chunk = sock.recv(65536)
            assert chunk, "the server closed the stream before any delta"
            received += chunk
        assert received.startswith(b"HTTP/1.1 200") and b"text/event-stream" in received
    # the socket is closed mid-stream: the decode is withdrawn and no later window is queued
    assert wait_until(lambda: worker.stats.cancelled > cancelled, 30), "the hung-up stream's decode was not cancelled"
    assert wait_until(lambda: worker.live_rows == 0 and worker.pending == 0, 30), "its work stayed in the worker"
    steps = worker.stats.steps
    assert not wait_until(lambda: worker.stats.steps > steps, 2), "the worker went on decoding for nobody"
    # the server still serves everyone else
    reply = httpx.post(f"{rest_server.url}/v1/audio/transcriptions",
                       files={"file": ("a.flac", goforward["path"].read_bytes())},
                       data={"model": "tiny.en"}, headers={"Authorization": AUTH}, timeout=120)
    assert reply.status_code == 200 and "forward" in reply.json()["text"].lower()
