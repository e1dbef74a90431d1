"""The REST API, served for real on loopback, called with the official openai SDK and raw HTTP."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

from tests.integration.conftest import TOKENS

normalize = EnglishTextNormalizer({})


@pytest.fixture(scope="module")
def client(rest_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{rest_server.url}/v1", api_key=TOKENS["alice"], max_retries=0)


@pytest.fixture(scope="module")
def goforward(real_speech) -> dict:
    return next(r for r in real_speech if r["audio_filepath"].endswith("goforward.flac"))


AUTH = {"Authorization": f"Bearer {TOKENS['alice']}"}


def post(url: str, content: bytes, filename: str = "a.flac", **fields) -> httpx.Response:
    return httpx.post(f"{url}/v1/audio/transcriptions", files={"file": (filename, content)},
                      data={"model": "tiny.en", **fields}, headers=AUTH, timeout=120)


def test_openai_sdk_transcribes(client, goforward):
    with open(goforward["path"], "rb") as fh:
        result = client.audio.transcriptions.create(model="whisper-1", file=fh)
    assert normalize(result.text) == normalize(goforward["text"])


def test_openai_sdk_verbose_json_with_segments(client, real_speech):
    row = real_speech[0]
    with open(row["path"], "rb") as fh:
        result = client.audio.transcriptions.create(
            model="tiny.en", file=fh, response_format="verbose_json", timestamp_granularities=["segment"]
        )
    assert result.language == "english"
    assert abs(result.duration - row["duration"]) < 0.1
    assert result.segments and result.segments[0].start == 0.0
    assert result.segments[-1].end <= result.duration + 0.01
    assert "dashwood" in result.text.lower()


def test_openai_sdk_lists_models(client):
    ids = [m.id for m in client.models.list()]
    assert "tiny.en" in ids and "whisper-1" in ids


@pytest.mark.parametrize("fmt", ["json", "text", "srt", "vtt", "verbose_json"])
def test_every_response_format(rest_server, goforward, fmt):
    response = post(rest_server.url, goforward["path"].read_bytes(), response_format=fmt)
    assert response.status_code == 200, response.text
    body = response.text
    if fmt in ("json", "verbose_json"):
        text = json.loads(body)["text"]
    elif fmt == "text":
        text = body
    elif fmt == "srt":
        lines = body.strip().splitlines()
        assert lines[0] == "1" and lines[1].startswith("00:00:00,000 --> 00:00:0")
        text = " ".join(lines[2:])
    else:
        lines = body.strip().splitlines()
        assert lines[0] == "WEBVTT" and "-->" in lines[2]
        text = " ".join(lines[3:])
    assert normalize(text) == normalize(goforward["text"])


def test_wav_upload_at_another_rate(rest_server, goforward):
    import soxr

    from splitasr.audio import decode_audio, encode_wav_pcm16

    audio = soxr.resample(decode_audio(goforward["path"]), 16000, 44100)
    response = post(rest_server.url, encode_wav_pcm16(audio, 44100), filename="a.wav")
    assert response.status_code == 200
    assert normalize(response.json()["text"]) == normalize(goforward["text"])


def assert_error(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    message = response.json()["error"]["message"]
    for w in words:
        assert w in message.lower(), message
    assert "traceback" not in response.text.lower()


def test_garbage_bytes_are_rejected(rest_server):
    assert_error(post(rest_server.url, b"\x00\x01garbage" * 100), 400, "could not decode")


def test_empty_file_is_rejected(rest_server):
    assert_error(post(rest_server.url, b""), 400, "empty")


def test_truncated_flac_is_rejected_or_partial(rest_server, goforward):
    head = goforward["path"].read_bytes()[:60]
    assert_error(post(rest_server.url, head), 400)


def test_wrong_field_name(rest_server, goforward):
    response = httpx.post(f"{rest_server.url}/v1/audio/transcriptions",
                          files={"audio": ("a.flac", goforward["path"].read_bytes())},
                          data={"model": "tiny.en"}, headers=AUTH, timeout=60)
    assert_error(response, 400, "file")


def test_missing_model_field(rest_server, goforward):
    response = httpx.post(f"{rest_server.url}/v1/audio/transcriptions",
                          files={"file": ("a.flac", goforward["path"].read_bytes())}, headers=AUTH, timeout=60)
    assert_error(response, 400, "model")


def test_unknown_model_lists_valid_names(rest_server, goforward):
    response = post(rest_server.url, goforward["path"].read_bytes(), model="nope")
    assert_error(response, 404, "nope", "tiny.en")


def test_bad_parameter_values(rest_server, goforward):
    assert_error(post(rest_server.url, goforward["path"].read_bytes(), response_format="xml"), 400, "response_format")
    assert_error(post(rest_server.url, goforward["path"].read_bytes(), language="de"), 400, "english-only")


def test_oversized_upload_gets_413(rest_server):
    big = b"\0" * (rest_server.settings.max_upload_bytes + 1)
    assert_error(post(rest_server.url, big), 413, "limit")


def test_oversized_chunked_upload_gets_413(rest_server):
    limit = rest_server.settings.max_upload_bytes

    def chunks():  # a valid multipart body, streamed without a Content-Length
        yield b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        for _ in range(limit // 65536 + 2):
            yield b"\0" * 65536
        yield b"\r\n--x--\r\n"

    response = httpx.post(f"{rest_server.url}/v1/audio/transcriptions", content=chunks(),
                          headers={"content-type": "multipart/form-data; boundary=x", **AUTH}, timeout=60)
    assert response.status_code == 413


def test_server_still_serves_after_bad_requests(rest_server, goforward):
    for _ in range(3):
        post(rest_server.url, b"junk")
    response = post(rest_server.url, goforward["path"].read_bytes())
    assert response.status_code == 200
    assert httpx.get(f"{rest_server.url}/readyz").json()["status"] == "ready"


def test_health_and_openapi(rest_server):
    assert httpx.get(f"{rest_server.url}/healthz").json() == {"status": "ok"}
    spec = httpx.get(f"{rest_server.url}/openapi.json").json()
    assert "/v1/audio/transcriptions" in spec["paths"]


def test_concurrent_requests_are_batched_and_correct(rest_server, real_speech):
    import concurrent.futures

    rows = real_speech[5:10]
    with concurrent.futures.ThreadPoolExecutor(len(rows)) as pool:
        responses = list(pool.map(lambda r: post(rest_server.url, r["path"].read_bytes()), rows))
    assert all(r.status_code == 200 for r in responses)
    texts = [normalize(r.json()["text"]).replace(" ", "") for r in responses]
    # each answer belongs to its own request (cards: "ten of clubs", "four queen of clubs", ...)
    for row, text in zip(rows, texts):
        assert text.startswith(normalize(row["text"]).split()[0].replace(" ", "")), (row["text"], text)


def test_openai_sdk_reads_verbose_json_words_and_logprobs(client, goforward):
    """The SDK's own types parse every field: segment statistics, word times, token log-probabilities."""
    with open(goforward["path"], "rb") as fh:
        verbose = client.audio.transcriptions.create(model="whisper-1", file=fh, response_format="verbose_json",
                                                     timestamp_granularities=["word", "segment"])
    segment = verbose.segments[0]
    assert segment.seek == 0 and segment.temperature == 0.0
    assert -3.0 < segment.avg_logprob <= 0.0 and 0.5 < segment.compression_ratio < 2.4
    assert 0.0 <= segment.no_speech_prob < 0.6
    assert [w.word.lower().strip(".,") for w in verbose.words][:2] == ["go", "forward"]
    assert all(a.start <= b.start for a, b in zip(verbose.words, verbose.words[1:]))
    assert verbose.usage.seconds == pytest.approx(goforward["duration"], abs=0.1)
    with open(goforward["path"], "rb") as fh:
        plain = client.audio.transcriptions.create(model="whisper-1", file=fh, include=["logprobs"])
    assert plain.logprobs and all(p.logprob <= 0.0 for p in plain.logprobs)
    assert "".join(p.token for p in plain.logprobs).strip() == plain.text


def test_adapter_upload_refuses_fields_it_does_not_know(rest_server):
    from tests.adapter_factory import adapter_bytes

    data = adapter_bytes(rest_server.engine.spec, "lora", seed=3)
    response = httpx.post(f"{rest_server.url}/v1/adapters", files={"file": ("a.safetensors", data)},
                          data={"name": "fields-check", "kind": "lora"}, headers=AUTH, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "kind" and "unknown field 'kind'" in error["message"]
    assert httpx.get(f"{rest_server.url}/v1/adapters/fields-check", headers=AUTH).status_code == 404
