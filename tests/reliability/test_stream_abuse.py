"""Abuse of ``StreamingRecognize``: wrong message order, silence, giant chunks, cancellation, too many
streams. Each ends with a clear status, frees its stream slot, and leaves the server serving others."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitasr_device._proto import recognizer_pb2 as pb
from tests.reliability.conftest import FUZZ_EXAMPLES, assert_grpc_error, assert_serves_others, serve_both

INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
MAX_STREAMS = 4
IDLE_S = 2.0
CHUNK_LIMIT = 64 * 1024
SILENCE_100MS = bytes(3200)


@pytest.fixture(scope="module")
def service(backbone_cache_dir, tmp_path_factory):
    with serve_both(backbone_cache_dir, tmp_path_factory.mktemp("streams"), max_streams=MAX_STREAMS,
                    stream_idle_timeout_s=IDLE_S, stream_max_chunk_bytes=CHUNK_LIMIT,
                    grpc_max_message_bytes=4 * 1024 * 1024, stream_vad="energy") as running:
        yield running


def config(**kw) -> pb.StreamingRecognizeRequest:
    rc = pb.RecognitionConfig(encoding=pb.LINEAR16, sample_rate_hz=kw.pop("rate", 16_000))
    return pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(config=rc, **kw))


def audio(data: bytes = SILENCE_100MS) -> pb.StreamingRecognizeRequest:
    return pb.StreamingRecognizeRequest(audio=data)


def active(service) -> int:
    return service.engine.streams.active


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def stream(service, requests, tenant="alice", timeout=60):
    return service.recognizer.StreamingRecognize(requests, metadata=service.metadata(tenant), timeout=timeout)


class HeldStream:
    """A stream that sends silence every 100 ms until released; consumed in a thread."""

    def __init__(self, service, tenant: str = "alice"):
        self.release = threading.Event()
        self.call = stream(service, self._requests(), tenant)
        self.error: grpc.RpcError | None = None
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _requests(self):
        yield config(interim_results=False)
        while not self.release.wait(0.1):
            yield audio()

    def _drain(self) -> None:
        try:
            for _ in self.call:
                pass
        except grpc.RpcError as exc:
            self.error = exc


def test_wrong_message_order(service):
    cases = [
        ([audio(), config()], "must be streaming_config"),
        ([], "must be streaming_config"),
        ([config(), audio(), config()], "only the first"),
        ([config(), config()], "only the first"),
        ([config(rate=1)], "sample_rate_hz"),
        ([config(rate=10_000_000)], "sample_rate_hz"),
    ]
    for requests, words in cases:
        assert_grpc_error(lambda requests=requests: stream(service, iter(requests)), INVALID, words)
    assert wait_for(lambda: active(service) == 0)
    assert_serves_others(service)


@pytest.mark.parametrize("sends_config", [False, True], ids=["nothing-at-all", "config-then-nothing"])
def test_a_client_that_goes_quiet_is_cut_off(service, sends_config):
    hold = threading.Event()

    def requests():
        if sends_config:
            yield config()
            yield audio()
        hold.wait(60)  # never sends (more), never closes

    started = time.monotonic()
    try:
        assert_grpc_error(lambda: stream(service, requests()), INVALID, f"no message for {IDLE_S:g} s")
    finally:
        hold.set()
    assert time.monotonic() - started < IDLE_S + 5
    assert wait_for(lambda: active(service) == 0)


def test_giant_chunks(service):
    assert_grpc_error(lambda: stream(service, iter([config(), audio(bytes(CHUNK_LIMIT + 2))])), EXHAUSTED,
                      "exceeds the limit")
    # over the gRPC message limit: refused by gRPC itself before it reaches the servicer
    assert_grpc_error(lambda: stream(service, iter([config(), audio(bytes(5 * 1024 * 1024))])), EXHAUSTED)
    assert wait_for(lambda: active(service) == 0)
    assert_serves_others(service)


def test_cancel_mid_stream_frees_the_slot(service):
    held = HeldStream(service)
    assert wait_for(lambda: active(service) == 1)
    held.call.cancel()
    held.thread.join(10)
    assert held.error is not None and held.error.code() == grpc.StatusCode.CANCELLED
    assert wait_for(lambda: active(service) == 0), "the server must notice the cancellation"
    held.release.set()


def test_more_streams_than_the_limit(service, goforward):
    held = [HeldStream(service, tenant=("alice", "bob")[i % 2]) for i in range(MAX_STREAMS)]
    try:
        assert wait_for(lambda: active(service) == MAX_STREAMS)
        assert_grpc_error(lambda: stream(service, iter([config(), audio()]), tenant="carol"),
                          grpc.StatusCode.UNAVAILABLE, f"limit of {MAX_STREAMS} streams")  # full: retry later
        assert_serves_others(service, goforward)  # unary calls are not streams: they still work
    finally:
        for h in held:
            h.release.set()
        for h in held:
            h.thread.join(20)
    assert all(h.error is None for h in held), [h.error for h in held]
    assert wait_for(lambda: active(service) == 0)
    responses = list(stream(service, iter([config(), audio(), audio()]), tenant="carol"))
    assert all(not r.results or r.results[0].transcript is not None for r in responses)


MESSAGE = st.one_of(
    st.builds(lambda rate, enc, interim, offset, ref: pb.StreamingRecognizeRequest(
        streaming_config=pb.StreamingRecognitionConfig(
            config=pb.RecognitionConfig(encoding=enc, sample_rate_hz=rate, adapter=ref), interim_results=interim,
            time_offset_seconds=offset)),
        st.sampled_from([0, 1, 3999, 8000, 16_000, 48_000, 384_000, 384_001, 2**31 - 1]),
        st.sampled_from([0, 1, 2, 99]), st.booleans(),
        st.floats(allow_nan=True, allow_infinity=True, width=32),
        st.none() | st.builds(lambda n: pb.AdapterRef(name=n), st.text(max_size=20))
        | st.builds(lambda h: pb.AdapterRef(sha256=h), st.text("0123456789abcdef", min_size=64, max_size=64))),
    st.builds(lambda b: pb.StreamingRecognizeRequest(audio=b), st.binary(max_size=4000)),
)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(messages=st.lists(MESSAGE, max_size=6) | st.lists(MESSAGE, max_size=6).map(lambda m: [config(), *m]))
def test_fuzzed_message_sequences(service, messages):
    try:
        for response in stream(service, iter(messages), tenant="bob", timeout=60):
            assert response is not None
    except grpc.RpcError as exc:
        assert exc.code() in (INVALID, EXHAUSTED, grpc.StatusCode.NOT_FOUND), (exc.code(), exc.details())
        assert "Traceback" not in (exc.details() or "")
