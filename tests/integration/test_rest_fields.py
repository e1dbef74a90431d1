"""Nothing accepted and ignored: every field the audio routes do not implement is a 400 naming it.

The official openai SDK against the real server on loopback (tiny.en, English-only).
"""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.integration.conftest import TOKENS


@pytest.fixture(scope="module")
def client(rest_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{rest_server.url}/v1", api_key=TOKENS["alice"], max_retries=0)


@pytest.fixture(scope="module")
def goforward(real_speech) -> dict:
    return next(r for r in real_speech if r["audio_filepath"].endswith("goforward.flac"))


def bad_request(call, param: str, *words: str) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as caught:
        call()
    error = caught.value.body
    assert error["param"] == param, error
    for word in words:
        assert word in error["message"].lower(), error
    return caught.value


@pytest.mark.parametrize(("kwargs", "param", "words"), [
    ({"chunking_strategy": "auto"}, "chunking_strategy", ("chunking_strategy is not supported", "vad_filter")),
    ({"chunking_strategy": {"type": "server_vad", "threshold": 0.5}}, "chunking_strategy", ("not supported",)),
    ({"known_speaker_names": ["ann"]}, "known_speaker_names", ("diarization",)),
    ({"known_speaker_references": ["data:audio/wav;base64,AAAA"]}, "known_speaker_references", ("diarization",)),
    ({"response_format": "diarized_json"}, "response_format", ("diarization", "supported: json, text")),
    ({"timestamp_granularities": ["sentence"]}, "timestamp_granularities[]", ("supported: segment, word",)),
    ({"include": ["item.input_audio_transcription.logprobs"]}, "include[]", ("not supported", "supported: logprobs")),
    ({"keywords": ["Dashwood"]}, "keywords[]", ("unknown field", "supported fields", "prompt")),
    ({"extra_body": {"beam": 4}}, "beam", ("unknown field",)),
    ({"extra_body": {"timestamp_granularities": "segment"}}, "timestamp_granularities",
     ("did you mean 'timestamp_granularities[]'",)),
])
def test_unsupported_transcription_fields_are_400(client, goforward, kwargs, param, words):
    def call():
        with open(goforward["path"], "rb") as fh:
            client.audio.transcriptions.create(model="tiny.en", file=fh, **kwargs)

    error = bad_request(call, param, *words)
    assert error.status_code == 400 and error.body["type"] == "invalid_request_error"


def test_supported_fields_still_work_and_usage_is_reported(client, goforward):
    with open(goforward["path"], "rb") as fh:
        result = client.audio.transcriptions.create(
            model="tiny.en", file=fh, response_format="verbose_json", timestamp_granularities=["segment"],
            language="en", prompt="Go forward.", temperature=0.0, extra_body={"beam_size": 2, "vad_filter": "false"})
    assert "forward" in result.text.lower()
    assert result.usage.type == "duration" and result.usage.seconds == pytest.approx(result.duration, abs=0.01)
    with open(goforward["path"], "rb") as fh:
        plain = client.audio.transcriptions.create(model="tiny.en", file=fh)
    assert plain.usage.type == "duration" and plain.usage.seconds == pytest.approx(goforward["duration"], abs=0.1)


def test_translation_on_an_english_only_backbone_is_a_clear_400(client, goforward):
    def call():
        with open(goforward["path"], "rb") as fh:
            client.audio.translations.create(model="whisper-1", file=fh)

    bad_request(call, "model", "english-only", "cannot translate", "multilingual")


def test_translation_fields_are_checked_too(client, goforward):
    def call():
        with open(goforward["path"], "rb") as fh:
            client.audio.translations.create(model="tiny.en", file=fh, extra_body={"language": "de"})

    bad_request(call, "language", "unknown field 'language'", "supported fields: beam_size, file, model, prompt")


def test_field_errors_come_after_authentication(rest_server, goforward):
    response = httpx.post(f"{rest_server.url}/v1/audio/transcriptions",
                          files={"file": ("a.flac", goforward["path"].read_bytes())},
                          data={"model": "tiny.en", "chunking_strategy": "auto"}, timeout=60)
    assert response.status_code == 401


def test_translations_route_is_documented(rest_server):
    spec = httpx.get(f"{rest_server.url}/openapi.json").json()
    fields = spec["components"]["schemas"]
    translation = next(v for k, v in fields.items() if k.startswith("Body_create_translation"))
    assert {"file", "model", "prompt", "response_format", "temperature"} <= set(translation["properties"])


def test_stream_on_translations_is_refused_unless_false(client, goforward):
    def call(stream: str):
        with open(goforward["path"], "rb") as fh:
            client.audio.translations.create(model="tiny.en", file=fh, extra_body={"stream": stream})

    bad_request(lambda: call("true"), "stream", "available on /v1/audio/transcriptions only")
    bad_request(lambda: call("false"), "model", "english-only")  # stream=false: on to the next check


def test_the_servers_vad_default_does_not_break_streamed_transcriptions(rest_server, goforward):
    def post(**fields) -> httpx.Response:
        return httpx.post(f"{rest_server.url}/v1/audio/transcriptions",
                          files={"file": ("a.flac", goforward["path"].read_bytes())},
                          data={"model": "tiny.en", "stream": "true", **fields},
                          headers={"Authorization": f"Bearer {TOKENS['alice']}"}, timeout=120)

    settings = rest_server.settings
    settings.vad_filter = True  # as SPLITASR_VAD_FILTER=true would set it
    try:
        streamed = post()
        assert streamed.status_code == 200, streamed.text
        assert "transcript.text.done" in streamed.text and "forward" in streamed.text.lower()
        refused = post(vad_filter="true")
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "vad_filter"
    finally:
        settings.vad_filter = False
