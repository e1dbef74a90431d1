"""A full server answers UNAVAILABLE with a google.rpc.RetryInfo delay, and the device client waits
that long before it tries again (real gRPC server on loopback, tiny.en, the client's own code)."""

from __future__ import annotations

import asyncio
import threading

import grpc

from splitasr.audio import decode_audio
from splitasr_device._proto import recognizer_pb2 as pb
from splitasr_device._proto import recognizer_pb2_grpc, status_pb2
from splitasr_device.retry import RetryPolicy, server_retry_delay
from splitasr_device.streaming import recognize_stream

FILLER = "a-full-server"


def _fill(grpc_server, n: int) -> None:
    """Take (or, negative, give back) ``n`` stream slots, as other tenants' streams would."""

    async def add() -> None:
        held = grpc_server.engine.streams.by_tenant
        held[FILLER] += n
        if held[FILLER] <= 0:
            del held[FILLER]

    asyncio.run_coroutine_threadsafe(add(), grpc_server.server.loop).result()


def test_the_status_details_are_google_rpc_status_with_retry_info(grpc_server):
    full = grpc_server.settings.max_streams
    _fill(grpc_server, full)
    try:
        with grpc.insecure_channel(grpc_server.address) as channel:
            stub = recognizer_pb2_grpc.RecognizerStub(channel)
            requests = iter([pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(
                config=pb.RecognitionConfig(encoding=pb.LINEAR16, sample_rate_hz=16000)))])
            try:
                list(stub.StreamingRecognize(requests, metadata=grpc_server.metadata(), timeout=30))
                raise AssertionError("a full server accepted the stream")
            except grpc.RpcError as exc:
                error = exc
    finally:
        _fill(grpc_server, -full)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    [raw] = [v for k, v in error.trailing_metadata() if k == "grpc-status-details-bin"]
    status = status_pb2.StatusDetails.FromString(raw)
    assert status.code == grpc.StatusCode.UNAVAILABLE.value[0] and status.message == error.details()
    [detail] = status.details
    assert detail.type_url == "type.googleapis.com/google.rpc.RetryInfo"
    assert server_retry_delay(error) == 1.0


def test_the_device_client_waits_the_servers_delay_then_streams(grpc_server, real_speech):
    pcm = (decode_audio(real_speech[5]["path"]) * 32767).astype("<i2").tobytes() + b"\0" * 16000
    full = grpc_server.settings.max_streams
    _fill(grpc_server, full)
    waits: list[float] = []
    freed = threading.Event()

    def sleep(seconds: float) -> None:  # the client's wait; the other streams end meanwhile
        waits.append(seconds)
        if not freed.is_set():
            _fill(grpc_server, -full)
            freed.set()

    try:
        with grpc.insecure_channel(grpc_server.address) as channel:
            stub = recognizer_pb2_grpc.RecognizerStub(channel)
            updates = list(recognize_stream(
                lambda requests: stub.StreamingRecognize(requests, metadata=grpc_server.metadata()),
                [pcm[i: i + 3200] for i in range(0, len(pcm), 3200)], 16000, pb.RecognitionConfig(),
                interim_results=False, policy=RetryPolicy(attempts=3, base_delay_s=0.01, max_delay_s=0.02),
                sleep=sleep))
    finally:
        if not freed.is_set():
            _fill(grpc_server, -full)
    # its own backoff would have waited at most 0.01 s: it waited the server's 1 s instead
    assert waits == [1.0]
    finals = [u for u in updates if u.is_final]
    assert len(finals) == 1 and "clubs" in finals[0].text.lower()
