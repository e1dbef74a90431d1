"""``stream=true`` on /v1/audio/transcriptions: the official openai SDK's streaming call against the
real server, long audio streamed window by window, and the errors that come before any event."""

from __future__ import annotations

import json
import time

import httpx
import numpy as np
import openai
import pytest
from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

from splitasr.audio import SAMPLE_RATE_HZ, decode_audio, encode_wav_pcm16
from splitasr.scoring import wer

from .conftest import TOKENS

normalize = EnglishTextNormalizer({})


@pytest.fixture(scope="module")
def client(rest_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{rest_server.url}/v1", api_key=TOKENS["alice"], max_retries=0)


def _clip(real_speech, name: str) -> dict:
    return next(r for r in real_speech if r["audio_filepath"] == name)


def test_openai_sdk_streams_a_transcription(client, real_speech):
    row = _clip(real_speech, "librivox/0870.flac")
    with open(row["path"], "rb") as f:
        events = list(client.audio.transcriptions.create(model="tiny.en", file=f, stream=True))
    *deltas, done = events
    assert deltas and all(e.type == "transcript.text.delta" and e.delta for e in deltas)
    assert done.type == "transcript.text.done"
    assert "".join(e.delta for e in deltas) == done.text
    assert wer([normalize(row["text"])], [normalize(done.text)]) <= 0.15, done.text
    usage = done.usage  # input: the encoder's 50 positions per second of audio; output: decoder tokens
    assert usage.type == "tokens" and abs(usage.input_tokens - 7.1 * 50) <= 5
    assert usage.output_tokens > 10 and usage.total_tokens == usage.input_tokens + usage.output_tokens


def test_streamed_logprobs_cover_each_deltas_tokens(rest_server, real_speech):
    row = _clip(real_speech, "misc/goforward.flac")
    response = httpx.post(f"{rest_server.url}/v1/audio/transcriptions", files={"file": ("a.flac", row["path"].read_bytes())},
                          data={"model": "tiny.en", "stream": "true", "include[]": "logprobs"},
                          headers=rest_server.headers(), timeout=120)
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    *deltas, done = events
    for delta in deltas:
        assert "".join(p["token"] for p in delta["logprobs"]).strip() == delta["delta"].strip()
        assert all(p["logprob"] <= 0 for p in delta["logprobs"])
    assert done["logprobs"] == [p for d in deltas for p in d["logprobs"]]


@pytest.fixture(scope="module")
def long_wav(real_speech) -> tuple[bytes, str]:
    """About 35 s of real speech with short pauses: two Whisper windows."""
    gap = np.zeros(SAMPLE_RATE_HZ // 2, np.float32)
    order = [0, 3, 2, 4, 0, 3]
    audio = np.concatenate([x for i in order for x in (decode_audio(real_speech[i]["path"]), gap)])
    return encode_wav_pcm16(audio), " ".join(real_speech[i]["text"] for i in order)


def test_long_audio_streams_window_by_window(rest_server, long_wav):
    data, reference = long_wav
    arrivals = []
    with httpx.stream("POST", f"{rest_server.url}/v1/audio/transcriptions", files={"file": ("long.wav", data)},
                      data={"model": "tiny.en", "stream": "true"}, headers=rest_server.headers(), timeout=300) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                arrivals.append((time.perf_counter(), json.loads(line[6:])))
    *deltas, (done_at, done) = arrivals
    assert done["type"] == "transcript.text.done" and len(deltas) >= 4
    assert "".join(e["delta"] for _, e in deltas) == done["text"]
    # the first window's text arrived while the second window was still being decoded
    assert done_at - deltas[0][0] > 0.2
    assert wer([normalize(reference)], [normalize(done["text"])]) <= 0.15, done["text"]


def test_stream_errors_come_before_the_stream_as_json(rest_server, real_speech):
    row = _clip(real_speech, "misc/goforward.flac")
    audio = row["path"].read_bytes()

    def post(**fields) -> httpx.Response:
        return httpx.post(f"{rest_server.url}/v1/audio/transcriptions", files={"file": ("a.flac", audio)},
                          data={"model": "tiny.en", "stream": "true", **fields}, headers=rest_server.headers(),
                          timeout=60)

    bad_format = post(response_format="srt")
    assert bad_format.status_code == 400 and "response_format" in bad_format.json()["error"]["message"]
    unknown = post(model="nobody")
    assert unknown.status_code == 404 and unknown.headers["content-type"] == "application/json"
    garbage = httpx.post(f"{rest_server.url}/v1/audio/transcriptions", files={"file": ("a.flac", b"not audio" * 50)},
                         data={"model": "tiny.en", "stream": "true"}, headers=rest_server.headers(), timeout=60)
    assert garbage.status_code == 400
    text = post(response_format="text")
    assert text.status_code == 200 and '"transcript.text.done"' in text.text
