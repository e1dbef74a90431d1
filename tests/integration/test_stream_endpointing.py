"""Endpointing chosen per stream (RecognitionConfig.endpointing) and voice activity events, on a real
gRPC server with tiny.en."""

from __future__ import annotations

import grpc
import pytest

from splitasr.audio import decode_audio
from splitasr_device import SplitASRClient
from splitasr_device._proto import recognizer_pb2 as pb
from splitasr_device._proto import recognizer_pb2_grpc

from .grpc_server import TOKENS

_RESPONSE = pb.StreamingRecognizeResponse


@pytest.fixture(scope="module")
def recognizer(grpc_server):
    with grpc.insecure_channel(grpc_server.address) as channel:
        yield recognizer_pb2_grpc.RecognizerStub(channel)


def _pcm(path) -> bytes:
    return (decode_audio(path) * 32767).astype("<i2").tobytes()


def _requests(pcm: bytes, endpointing: pb.EndpointingConfig | None = None, events: bool = False):
    config = pb.RecognitionConfig(encoding=pb.LINEAR16, sample_rate_hz=16000)
    if endpointing is not None:
        config.endpointing.CopyFrom(endpointing)
    yield pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(
        config=config, interim_results=False, voice_activity_events=events))
    for i in range(0, len(pcm), 3200):
        yield pb.StreamingRecognizeRequest(audio=pcm[i: i + 3200])


def _finals(responses) -> list[pb.StreamingRecognitionResult]:
    return [r.results[0] for r in responses if r.results and r.results[0].is_final]


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("silence_ms", 50, "silence_ms must be 100..10000 ms, got 50"),
    ("silence_ms", 20_000, "silence_ms must be 100..10000 ms"),
    ("speech_threshold", 0.0, "speech_threshold must be between 0 and 1 (exclusive), got 0"),
    ("speech_threshold", 1.5, "speech_threshold must be between 0 and 1"),
    ("max_utterance_seconds", 45.0, "max_utterance_seconds must be 1..30 s, got 45"),
    ("max_utterance_seconds", 0.5, "max_utterance_seconds must be 1..30 s"),
])
def test_endpointing_out_of_range_is_invalid_argument_naming_the_field(grpc_server, recognizer, field, value,
                                                                        expected):
    endpointing = pb.EndpointingConfig(**{field: value})
    with pytest.raises(grpc.RpcError) as info:
        list(recognizer.StreamingRecognize(_requests(b"\0" * 3200, endpointing), metadata=grpc_server.metadata()))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"config.endpointing.{expected}" in info.value.details()


def test_recognize_refuses_endpointing(grpc_server, recognizer):
    config = pb.RecognitionConfig(encoding=pb.LINEAR16, sample_rate_hz=16000,
                                  endpointing=pb.EndpointingConfig(silence_ms=800))
    with pytest.raises(grpc.RpcError) as info:
        recognizer.Recognize(pb.RecognizeRequest(config=config, audio=b"\0" * 3200), metadata=grpc_server.metadata())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "endpointing applies to StreamingRecognize only" in info.value.details()


def test_a_longer_endpoint_silence_keeps_a_pause_inside_one_utterance(grpc_server, recognizer, real_speech):
    first, second = _pcm(real_speech[5]["path"]), _pcm(real_speech[6]["path"])
    pause = b"\0" * 32000  # 1 s
    audio = first + pause + second + pause
    md = grpc_server.metadata()
    default = _finals(recognizer.StreamingRecognize(_requests(audio), metadata=md))
    with SplitASRClient(grpc_server.address, token=TOKENS["alice"]) as client:  # the device client's option
        chunks = [audio[i: i + 3200] for i in range(0, len(audio), 3200)]
        patient = [u for u in client.stream(chunks, interim_results=False, endpoint_silence_ms=1500) if u.is_final]
    assert len(default) == 2, "the server's 500 ms endpoint cuts at the pause"
    assert len(patient) == 1, "1.5 s of silence is needed to end an utterance: the 1 s pause does not"
    assert patient[0].text.split()[:2] == default[0].transcript.split()[:2]


def test_max_utterance_seconds_cuts_long_speech(grpc_server, recognizer, real_speech):
    finals = _finals(recognizer.StreamingRecognize(
        _requests(_pcm(real_speech[0]["path"]), pb.EndpointingConfig(max_utterance_seconds=2.0)),
        metadata=grpc_server.metadata()))
    assert len(finals) >= 3
    spans = [f.result_end_seconds - f.start_seconds for f in finals]
    assert all(s <= 2.0 + 0.032 + 1e-3 for s in spans), spans  # cut at the VAD frame (32 ms) that reaches 2 s


def test_voice_activity_events_bracket_each_utterance(grpc_server, recognizer, real_speech):
    audio = _pcm(real_speech[5]["path"]) + b"\0" * 32000 + _pcm(real_speech[6]["path"]) + b"\0" * 32000
    responses = list(recognizer.StreamingRecognize(_requests(audio, events=True), metadata=grpc_server.metadata()))
    kinds = [(r.speech_event_type, r.utterance if not r.results else r.results[0].utterance) for r in responses]
    begin, end, final = (_RESPONSE.SPEECH_ACTIVITY_BEGIN, _RESPONSE.SPEECH_ACTIVITY_END, _RESPONSE.END_OF_UTTERANCE)
    assert sorted(kinds) == sorted((kind, u) for kind in (begin, end, final) for u in (0, 1))
    for u in (0, 1):  # each utterance: begin, end, then its final (the next may begin before that final)
        assert kinds.index((begin, u)) < kinds.index((end, u)) < kinds.index((final, u))
    assert kinds.index((end, 0)) < kinds.index((begin, 1))
    by_kind = {kind: responses[kinds.index(kind)] for kind in kinds}
    assert by_kind[(begin, 0)].speech_event_seconds < by_kind[(end, 0)].speech_event_seconds
    assert by_kind[(end, 0)].speech_event_seconds == pytest.approx(
        by_kind[(final, 0)].results[0].result_end_seconds, abs=1e-3)
    off = list(recognizer.StreamingRecognize(_requests(audio), metadata=grpc_server.metadata()))
    assert all(r.results for r in off), "no events unless asked for"


def test_metrics_count_open_streams_and_time_finals(grpc_server, recognizer, real_speech):
    from splitasr.observability import REGISTRY

    def sample(name: str) -> float:
        return REGISTRY.get_sample_value(name) or 0.0

    finals_before = sample("splitasr_stream_final_seconds_count")
    audio = _pcm(real_speech[5]["path"]) + b"\0" * 32000
    call = recognizer.StreamingRecognize(_requests(audio, events=True), metadata=grpc_server.metadata())
    first = next(call)  # speech began: the stream is open
    assert first.speech_event_type == _RESPONSE.SPEECH_ACTIVITY_BEGIN
    assert sample("splitasr_streams_active") >= 1
    rest = list(call)
    assert len(_finals(rest)) == 1
    assert sample("splitasr_stream_final_seconds_count") == finals_before + 1
    assert sample("splitasr_stream_final_seconds_sum") > 0
