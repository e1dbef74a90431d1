"""The VAD filter over REST (openai SDK, extension field) and gRPC (RecognitionConfig.vad_filter)."""

from __future__ import annotations

import io

import grpc
import numpy as np
import openai
import pytest

from splitasr.audio import SAMPLE_RATE_HZ, decode_audio, encode_wav_pcm16
from splitasr_device._proto import recognizer_pb2 as pb
from splitasr_device._proto import recognizer_pb2_grpc
from tests.integration.conftest import TOKENS

GAP_S = 40.0


@pytest.fixture(scope="module")
def gappy(real_speech) -> tuple[np.ndarray, float]:
    """'Go forward 10 meters.', 40 s of silence, then a card ('ten of clubs'...): audio and the card's start."""
    first = decode_audio(real_speech[-1]["path"])
    second = decode_audio(real_speech[5]["path"])
    audio = np.concatenate([first, np.zeros(int(GAP_S * SAMPLE_RATE_HZ), np.float32), second])
    return audio, len(first) / SAMPLE_RATE_HZ + GAP_S


def test_rest_vad_filter_keeps_original_times(rest_server, gappy, real_speech):
    audio, second_start = gappy
    client = openai.OpenAI(base_url=f"{rest_server.url}/v1", api_key=TOKENS["alice"], max_retries=0)
    wav = io.BytesIO(encode_wav_pcm16(audio))
    wav.name = "gappy.wav"
    result = client.audio.transcriptions.create(model="tiny.en", file=wav, response_format="verbose_json",
                                                timestamp_granularities=["segment", "word"],
                                                extra_body={"vad_filter": "true"})
    assert result.duration == pytest.approx(len(audio) / SAMPLE_RATE_HZ, abs=0.01)
    assert result.usage.seconds == pytest.approx(result.duration, abs=0.01)
    assert "forward" in result.text.lower() and "club" in result.text.lower()
    later = [s for s in result.segments if s.start > 10]
    assert later, result.segments
    # the card's speech starts within the filter's 400 ms padding of where it really is
    assert second_start - 0.5 <= later[0].start <= second_start + 1.0, (later[0].start, second_start)
    assert all(s.end <= result.duration + 0.01 for s in result.segments)
    clubs = [w for w in result.words if "club" in w.word.lower()]
    assert clubs and second_start <= clubs[0].start <= second_start + 2.0, clubs  # words move back too
    assert all(a.start <= b.start for a, b in zip(result.words, result.words[1:]))


def test_grpc_vad_filter_on_recognize_and_refused_on_streams(grpc_server, gappy):
    audio, second_start = gappy
    pcm = (audio * 32767).astype("<i2").tobytes()
    with grpc.insecure_channel(grpc_server.address) as channel:
        stub = recognizer_pb2_grpc.RecognizerStub(channel)
        config = pb.RecognitionConfig(encoding=pb.LINEAR16, sample_rate_hz=16000, vad_filter=True)
        response = stub.Recognize(pb.RecognizeRequest(config=config, audio=pcm), metadata=grpc_server.metadata(),
                                  timeout=300)
        assert response.duration_seconds == pytest.approx(len(audio) / SAMPLE_RATE_HZ, abs=0.01)
        later = [s for s in response.segments if s.start_seconds > 10]
        assert later and second_start - 0.5 <= later[0].start_seconds <= second_start + 1.0
        assert all(later[0].start_seconds <= w.start_seconds for w in later[0].words)

        def stream():
            yield pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(config=config))
            yield pb.StreamingRecognizeRequest(audio=pcm[:3200])

        with pytest.raises(grpc.RpcError) as caught:
            list(stub.StreamingRecognize(stream(), metadata=grpc_server.metadata(), timeout=60))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "vad_filter" in caught.value.details()


def test_silence_only_gives_an_empty_result_and_the_default_comes_from_settings(rest_server):
    from splitasr.api.rest.audio import vad_options

    client = openai.OpenAI(base_url=f"{rest_server.url}/v1", api_key=TOKENS["alice"], max_retries=0)
    wav = io.BytesIO(encode_wav_pcm16(np.zeros(20 * SAMPLE_RATE_HZ, np.float32)))
    wav.name = "silence.wav"
    result = client.audio.transcriptions.create(model="tiny.en", file=wav, response_format="verbose_json",
                                                extra_body={"vad_filter": True})
    assert result.text == "" and result.segments == [] and result.duration == pytest.approx(20.0)
    settings = rest_server.settings
    assert vad_options(settings, None) is None and vad_options(settings, True) is not None
    on = settings.model_copy(update={"vad_filter": True, "vad_min_silence_ms": 800})
    assert vad_options(on, None).min_silence_duration_ms == 800 and vad_options(on, False) is None


def test_device_client_sends_vad_filter(grpc_server, gappy, tmp_path):
    from splitasr_device import SplitASRClient

    audio, second_start = gappy
    wav = tmp_path / "gappy.wav"
    wav.write_bytes(encode_wav_pcm16(audio))
    with SplitASRClient(grpc_server.address, token=grpc_server.metadata()[0][1].removeprefix("Bearer ")) as client:
        result = client.transcribe(wav, vad_filter=True)
    later = [s for s in result.segments if s.start > 10]
    assert later and second_start - 0.5 <= later[0].start <= second_start + 1.0
