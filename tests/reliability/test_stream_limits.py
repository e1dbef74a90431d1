"""Stream limits per tenant and in all: one tenant's silent streams never starve another tenant, and a
refused stream reads the limit it hit (RESOURCE_EXHAUSTED for the tenant's, UNAVAILABLE with a retry
delay for the server's), never INTERNAL."""

from __future__ import annotations

import asyncio
import collections

import grpc
import numpy as np
import pytest

from splitasr.audio import decode_audio
from splitasr_device._proto import recognizer_pb2 as pb
from splitasr_device._proto import recognizer_pb2_grpc
from tests.reliability.conftest import assert_grpc_error, serve_both
from tests.reliability.test_stream_abuse import HeldStream, active, audio, config, wait_for

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
MAX_STREAMS = 8
PER_TENANT = 4


@pytest.fixture(scope="module")
def service(backbone_cache_dir, tmp_path_factory):
    with serve_both(backbone_cache_dir, tmp_path_factory.mktemp("stream-limits"), max_streams=MAX_STREAMS,
                    max_streams_per_tenant=PER_TENANT, stream_vad="energy") as running:
        yield running


def speech_requests(goforward: bytes):
    pcm = (np.clip(decode_audio(goforward), -1, 1) * 32767).astype("<i2").tobytes()
    return [config(), *[audio(pcm[i: i + 3200]) for i in range(0, len(pcm), 3200)]]


def finals(service, requests, tenant: str) -> str:
    responses = service.recognizer.StreamingRecognize(iter(requests), metadata=service.metadata(tenant), timeout=120)
    return " ".join(r.transcript for response in responses for r in response.results if r.is_final)


def release(held: list[HeldStream]) -> None:
    for h in held:
        h.release.set()
    for h in held:
        h.thread.join(20)
    assert all(h.error is None for h in held), [h.error for h in held]


def test_one_tenants_silent_streams_do_not_block_another(service, goforward):
    held = [HeldStream(service, tenant="alice") for _ in range(PER_TENANT)]
    try:
        assert wait_for(lambda: active(service) == PER_TENANT)
        assert_grpc_error(lambda: list(service.recognizer.StreamingRecognize(
            iter([config(), audio()]), metadata=service.metadata("alice"), timeout=30)), EXHAUSTED,
            f"its limit of {PER_TENANT}", "SPLITASR_MAX_STREAMS_PER_TENANT")
        assert "forward" in finals(service, speech_requests(goforward), "bob").lower()
    finally:
        release(held)
    assert wait_for(lambda: active(service) == 0)


def test_the_server_wide_limit_still_holds(service, goforward):
    held = [HeldStream(service, tenant=("alice", "bob")[i % 2]) for i in range(MAX_STREAMS)]
    try:
        assert wait_for(lambda: active(service) == MAX_STREAMS)
        assert_grpc_error(lambda: list(service.recognizer.StreamingRecognize(
            iter([config(), audio()]), metadata=service.metadata("carol"), timeout=30)),
            grpc.StatusCode.UNAVAILABLE, f"limit of {MAX_STREAMS} streams")  # a full server: retry later
        response = service.recognizer.Recognize(pb.RecognizeRequest(audio=goforward), metadata=service.metadata("carol"),
                                                timeout=120)
        assert "forward" in response.text.lower()
    finally:
        release(held)


def test_refused_streams_read_resource_exhausted_never_internal(service):
    """30 refused calls from grpc.aio clients that are still writing when refused (the client-side
    race that made them read INTERNAL "Internal error from Core")."""
    held = [HeldStream(service, tenant="alice") for _ in range(PER_TENANT)]

    async def attempts() -> collections.Counter:
        codes: collections.Counter = collections.Counter()
        async with grpc.aio.insecure_channel(service.grpc_address) as channel:
            stub = recognizer_pb2_grpc.RecognizerStub(channel)

            async def one() -> None:
                async def requests():
                    yield config()
                    for _ in range(10):
                        yield audio()
                        await asyncio.sleep(0.01)

                try:
                    async for _ in stub.StreamingRecognize(requests(), metadata=service.metadata("alice"), timeout=30):
                        pass
                    codes["OK"] += 1
                except grpc.RpcError as exc:
                    codes[exc.code()] += 1

            await asyncio.gather(*(one() for _ in range(30)))
        return codes

    try:
        assert wait_for(lambda: active(service) == PER_TENANT)
        assert asyncio.run(attempts()) == {EXHAUSTED: 30}
    finally:
        release(held)
