"""The gRPC API against a real server on loopback (real tiny.en, real adapters, real speech)."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from splitasr.audio import decode_audio
from splitasr_device._proto import adapters_pb2 as apb
from splitasr_device._proto import adapters_pb2_grpc, recognizer_pb2_grpc
from splitasr_device._proto import recognizer_pb2 as pb
from tests.adapter_factory import adapter_bytes


@pytest.fixture(scope="module")
def channel(grpc_server):
    with grpc.insecure_channel(grpc_server.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def adapters(channel):
    return adapters_pb2_grpc.AdaptersStub(channel)


@pytest.fixture(scope="module")
def recognizer(channel):
    return recognizer_pb2_grpc.RecognizerStub(channel)


def _upload_requests(data: bytes, name: str, sha256: str | None = None, size: int | None = None, chunk: int = 65536):
    yield apb.UploadRequest(header=apb.UploadHeader(name=name, sha256=sha256 or hashlib.sha256(data).hexdigest(),
                                                    size=len(data) if size is None else size))
    for i in range(0, len(data), chunk):
        yield apb.UploadRequest(chunk=data[i: i + chunk])


def _pcm(path) -> bytes:
    return (decode_audio(path) * 32767).astype("<i2").tobytes()


def _stream_requests(pcm: bytes, chunk: int = 3200, config: pb.RecognitionConfig | None = None, interim=True):
    config = config or pb.RecognitionConfig(encoding=pb.LINEAR16, sample_rate_hz=16000)
    yield pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(
        config=config, interim_results=interim))
    for i in range(0, len(pcm), chunk):
        yield pb.StreamingRecognizeRequest(audio=pcm[i: i + chunk])


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if hasattr(result, "__iter__") and not isinstance(result, (bytes, str)):
            list(result)
    return info.value.code(), info.value.details()


def test_health_and_reflection_need_no_token(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "splitasr.v1.Recognizer", "splitasr.v1.Adapters"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    [answer] = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for s in answer.list_services_response.service}
    assert {"splitasr.v1.Recognizer", "splitasr.v1.Adapters", "grpc.health.v1.Health"} <= names


def test_upload_stat_recognize_delete(grpc_server, adapters, recognizer, real_speech):
    md = grpc_server.metadata("alice")
    data = adapter_bytes(grpc_server.engine.spec, "lora", seed=3)
    sha = hashlib.sha256(data).hexdigest()
    info = adapters.Upload(_upload_requests(data, "alice-voice"), metadata=md)
    assert (info.name, info.sha256, info.kind, info.size) == ("alice-voice", sha, "lora", len(data))
    assert adapters.Stat(apb.StatRequest(sha256=sha), metadata=md).name == "alice-voice"
    assert adapters.Stat(apb.StatRequest(name="alice-voice"), metadata=md).sha256 == sha
    assert [a.name for a in adapters.List(apb.ListAdaptersRequest(), metadata=md).adapters] == ["alice-voice"]
    # another tenant sees nothing, even knowing the hash
    assert _code(lambda: adapters.Stat(apb.StatRequest(sha256=sha), metadata=grpc_server.metadata("bob")))[0] \
        == grpc.StatusCode.NOT_FOUND
    audio = real_speech[-1]["path"].read_bytes()
    for ref in (pb.AdapterRef(sha256=sha), pb.AdapterRef(name="alice-voice")):
        response = recognizer.Recognize(pb.RecognizeRequest(
            config=pb.RecognitionConfig(adapter=ref, encoding=pb.ENCODED_FILE), audio=audio), metadata=md)
        assert "forward" in response.text.lower() and response.segments[0].words
    plain = recognizer.Recognize(pb.RecognizeRequest(audio=audio), metadata=md)
    assert plain.language == "en" and plain.duration_seconds == pytest.approx(2.79, abs=0.05)
    words = plain.segments[0].words
    assert [w.word for w in words] == plain.segments[0].text.split()
    assert all(a.end_seconds <= b.start_seconds + 1e-6 for a, b in itertools.pairwise(words))
    pcm = recognizer.Recognize(pb.RecognizeRequest(
        config=pb.RecognitionConfig(encoding=pb.LINEAR16, sample_rate_hz=16000),
        audio=_pcm(real_speech[-1]["path"])), metadata=md)
    assert pcm.text == plain.text
    assert adapters.Delete(apb.DeleteAdapterRequest(name="alice-voice"), metadata=md).sha256 == sha
    assert _code(lambda: adapters.Stat(apb.StatRequest(sha256=sha), metadata=md))[0] == grpc.StatusCode.NOT_FOUND
    assert not grpc_server.engine.store.blob_path(sha).exists()


@pytest.mark.parametrize("metadata, expected", [
    ((), "missing API key"),
    ((("authorization", "Bearer wrong-token-0123456789"),), "invalid API key"),
])
def test_wrong_or_missing_token_is_unauthenticated(adapters, recognizer, metadata, expected):
    code, details = _code(lambda: adapters.List(apb.ListAdaptersRequest(), metadata=metadata))
    assert code == grpc.StatusCode.UNAUTHENTICATED and expected in details
    code, _ = _code(lambda: recognizer.StreamingRecognize(_stream_requests(b"\0" * 3200), metadata=metadata))
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_upload_errors_are_clear_and_store_nothing(grpc_server, adapters):
    md = grpc_server.metadata("alice")
    data = adapter_bytes(grpc_server.engine.spec, "lora", seed=4)
    cases = [
        (iter([apb.UploadRequest(chunk=b"x")]), grpc.StatusCode.INVALID_ARGUMENT, "first Upload message"),
        (_upload_requests(data, "x", sha256="0" * 64), grpc.StatusCode.INVALID_ARGUMENT, "corrupt"),
        (_upload_requests(data, "x", size=len(data) + 1), grpc.StatusCode.INVALID_ARGUMENT, "incomplete"),
        (_upload_requests(data, "bad name!"), grpc.StatusCode.INVALID_ARGUMENT, "invalid adapter name"),
        (_upload_requests(b"not an adapter" * 10, "x"), grpc.StatusCode.INVALID_ARGUMENT, ""),
        (_upload_requests(data, "x", size=64 * 1024 * 1024), grpc.StatusCode.RESOURCE_EXHAUSTED, "exceeds the limit"),
    ]
    for requests, code, text in cases:
        got, details = _code(lambda requests=requests: adapters.Upload(requests, metadata=md))
        assert got == code and text in details, details
    names = [a.name for a in adapters.List(apb.ListAdaptersRequest(), metadata=md).adapters]
    assert "half" not in names


def test_a_client_that_disconnects_mid_upload_leaves_nothing(grpc_server, adapters):
    md = grpc_server.metadata("bob")
    data = adapter_bytes(grpc_server.engine.spec, "glora", seed=5)
    sent = threading.Event()

    def requests():
        for i, request in enumerate(_upload_requests(data, "half", chunk=16384)):
            yield request
            if i == 3:
                sent.set()
                time.sleep(5)  # the client gives up meanwhile

    future = adapters.Upload.future(requests(), metadata=md)
    assert sent.wait(10)
    time.sleep(0.3)
    future.cancel()
    time.sleep(0.5)
    names = [a.name for a in adapters.List(apb.ListAdaptersRequest(), metadata=md).adapters]
    assert "half" not in names
    assert not grpc_server.engine.store.blob_path(hashlib.sha256(data).hexdigest()).exists()


def test_unknown_adapter_is_not_found(grpc_server, recognizer, real_speech):
    md = grpc_server.metadata("alice")
    for ref in (pb.AdapterRef(name="nope"), pb.AdapterRef(sha256="ab" * 32)):
        config = pb.RecognitionConfig(adapter=ref, encoding=pb.LINEAR16, sample_rate_hz=16000)
        code, details = _code(lambda config=config: recognizer.StreamingRecognize(_stream_requests(b"\0" * 3200, config=config),
                                                                    metadata=md))
        assert code == grpc.StatusCode.NOT_FOUND and "nope" in details or "enroll" in details
    code, _ = _code(lambda: recognizer.Recognize(pb.RecognizeRequest(
        config=pb.RecognitionConfig(adapter=pb.AdapterRef(name="nope")), audio=b"x"), metadata=md))
    assert code == grpc.StatusCode.NOT_FOUND


def test_bad_audio_and_deadlines(grpc_server, recognizer):
    md = grpc_server.metadata("alice")
    code, details = _code(lambda: recognizer.Recognize(pb.RecognizeRequest(audio=b"not audio at all"), metadata=md))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "could not decode" in details
    code, details = _code(lambda: recognizer.Recognize(pb.RecognizeRequest(
        config=pb.RecognitionConfig(encoding=pb.LINEAR16), audio=b"\0\0"), metadata=md))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "sample_rate_hz" in details
    # 10 s of noise (digital silence would be skipped without decoding, well within any deadline)
    noise = (np.random.default_rng(0).normal(0, 3000, 160_000).clip(-32768, 32767)).astype("<i2").tobytes()
    code, _ = _code(lambda: recognizer.Recognize(pb.RecognizeRequest(
        config=pb.RecognitionConfig(encoding=pb.LINEAR16, sample_rate_hz=16000), audio=noise),
        metadata=md, timeout=0.05))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    too_big = pb.RecognizeRequest(audio=b"\0" * (grpc_server.settings.grpc_max_message_bytes + 1))
    assert _code(lambda: recognizer.Recognize(too_big, metadata=md))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_malformed_streams_fail_clearly_while_another_stream_continues(grpc_server, recognizer, real_speech):
    md = grpc_server.metadata("alice")
    good = recognizer.StreamingRecognize(_stream_requests(_pcm(real_speech[5]["path"]), interim=False), metadata=md)
    config = pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(
        config=pb.RecognitionConfig(encoding=pb.LINEAR16, sample_rate_hz=16000)))
    audio = pb.StreamingRecognizeRequest(audio=b"\0" * 3200)
    cases = [
        ([audio, audio], grpc.StatusCode.INVALID_ARGUMENT, "first StreamingRecognize message must be"),
        ([], grpc.StatusCode.INVALID_ARGUMENT, "first StreamingRecognize message must be"),
        ([config, audio, config], grpc.StatusCode.INVALID_ARGUMENT, "only the first"),
        ([config, pb.StreamingRecognizeRequest(audio=b"\0" * (65 * 1024))], grpc.StatusCode.RESOURCE_EXHAUSTED,
         "exceeds the limit"),
        ([pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(
            config=pb.RecognitionConfig(encoding=pb.ENCODED_FILE)))], grpc.StatusCode.INVALID_ARGUMENT, "LINEAR16"),
        ([pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(
            config=pb.RecognitionConfig(encoding=pb.LINEAR16, sample_rate_hz=12)))],
         grpc.StatusCode.INVALID_ARGUMENT, "sample_rate_hz"),
    ]
    for requests, code, text in cases:
        got, details = _code(lambda requests=requests: recognizer.StreamingRecognize(iter(requests), metadata=md))
        assert got == code and text in details, details
    finals = [r.results[0] for r in good if r.results and r.results[0].is_final]
    assert [f.transcript.lower().strip(".") for f in finals] == ["10 of clubs"]


def test_a_full_server_is_unavailable_with_a_retry_delay(grpc_server, recognizer):
    from splitasr_device.retry import server_retry_delay

    md = grpc_server.metadata("alice")
    streams = grpc_server.engine.streams
    full = grpc_server.settings.max_streams
    asyncio.run_coroutine_threadsafe(_add(streams, full), grpc_server.server.loop).result()  # as if full
    try:
        with pytest.raises(grpc.RpcError) as info:
            list(recognizer.StreamingRecognize(_stream_requests(b"\0" * 3200), metadata=md))
    finally:
        asyncio.run_coroutine_threadsafe(_add(streams, -full), grpc_server.server.loop).result()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "limit of" in info.value.details()
    assert server_retry_delay(info.value) == 1.0  # google.rpc.RetryInfo in grpc-status-details-bin


async def _add(streams, n: int) -> None:
    """``n`` more (or fewer) streams held by another tenant, as far as the server's limit counts."""
    held = streams.by_tenant
    held["another-tenant"] += n
    if held["another-tenant"] <= 0:
        del held["another-tenant"]


def test_streaming_a_real_utterance_gives_interims_then_a_final(grpc_server, recognizer, real_speech):
    md = grpc_server.metadata("alice")
    row = real_speech[0]  # 7 s
    pcm = _pcm(row["path"])

    def paced():
        for request in _stream_requests(pcm + b"\0" * 32000, chunk=3200):  # 100 ms chunks, 1 s silence after
            yield request
            time.sleep(0.1)  # real time, as from a microphone

    responses = list(recognizer.StreamingRecognize(paced(), metadata=md))
    interims = [r for r in responses if r.results and not r.results[0].is_final]
    finals = [r for r in responses if r.results and r.results[0].is_final]
    assert len(interims) >= 2 and len(finals) == 1
    assert finals[0].speech_event_type == pb.StreamingRecognizeResponse.END_OF_UTTERANCE
    final = finals[0].results[0]
    assert "dashwood" in final.transcript.lower() and final.words
    assert final.result_end_seconds < len(pcm) / 32000 + 0.6  # cut by the VAD, not by the end of the stream
    # stabilities from the agreement: committed words at least 0.75, the rest at most 0.5
    last = interims[-1].results
    assert all(0 < r.stability < 1 for r in last)
    assert len(last) < 2 or (last[0].stability >= 0.75 and last[1].stability <= 0.5)


def test_calls_are_counted_and_carry_a_request_id(grpc_server, adapters):
    from splitasr.observability import REGISTRY

    def count(status: str) -> float:
        labels = {"grpc_service": "splitasr.v1.Adapters", "grpc_method": "Stat", "grpc_type": "unary",
                  "grpc_code": status}
        return REGISTRY.get_sample_value("splitasr_grpc_server_handled_total", labels) or 0.0

    ok, missing = count("OK"), count("NOT_FOUND")
    md = grpc_server.metadata()
    _, call = adapters.List.with_call(apb.ListAdaptersRequest(), metadata=md + (("x-request-id", "trace-42"),))
    assert ("x-request-id", "trace-42") in tuple(call.initial_metadata())
    assert _code(lambda: adapters.Stat(apb.StatRequest(name="nobody-has-this"), metadata=md))[0] \
        == grpc.StatusCode.NOT_FOUND
    deadline = time.monotonic() + 10  # the server counts a call after its status is on the wire
    while count("NOT_FOUND") < missing + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count("NOT_FOUND") == missing + 1 and count("OK") == ok
    _, call = adapters.List.with_call(apb.ListAdaptersRequest(), metadata=md)  # no id sent: the server makes one
    (rid,) = [v for k, v in call.initial_metadata() if k == "x-request-id"]
    assert len(rid) == 32
