"""Hostile adapter files and adapter names, through REST and gRPC, against one real server.

Every case gets a clear 4xx / gRPC status naming the problem, no stack trace, nothing stored (no
name, no blob, no temp file), and the server keeps serving another tenant.
"""

from __future__ import annotations

import hashlib
import re
import struct
from pathlib import Path
from urllib.parse import quote

import grpc
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitasr.storage.store import NAME_PATTERN
from splitasr_device._proto import adapters_pb2 as apb
from splitasr_device._proto import recognizer_pb2 as pb
from tests.adapter_factory import adapter_bytes
from tests.reliability.conftest import (
    FUZZ_EXAMPLES,
    TRACE_MARKERS,
    assert_grpc_error,
    assert_rest_error,
    assert_serves_others,
    grpc_error,
    serve_both,
)
from tests.reliability.hostile import HOSTILE_NAMES, adapter_cases, frame

INVALID = grpc.StatusCode.INVALID_ARGUMENT
TOO_BIG = grpc.StatusCode.RESOURCE_EXHAUSTED
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)


@pytest.fixture(scope="module")
def service(backbone_cache_dir, tmp_path_factory):
    with serve_both(backbone_cache_dir, tmp_path_factory.mktemp("hostile-adapters")) as running:
        yield running


@pytest.fixture(scope="module")
def cases(service):
    return adapter_cases(service.engine.spec)


@pytest.fixture(scope="module")
def valid(service) -> bytes:
    return adapter_bytes(service.engine.spec, "lora", seed=30)


def rest_upload(service, data: bytes, name: str = "hostile", tenant: str = "alice") -> httpx.Response:
    return httpx.post(f"{service.url}/v1/adapters", files={"file": ("a.safetensors", data)}, data={"name": name},
                      headers=service.headers(tenant), timeout=60)


def grpc_requests(data: bytes, name: str = "hostile", size: int | None = None, chunk: int = 1 << 20):
    yield apb.UploadRequest(header=apb.UploadHeader(name=name, sha256=hashlib.sha256(data).hexdigest(),
                                                    size=len(data) if size is None else size))
    for i in range(0, len(data), chunk):
        yield apb.UploadRequest(chunk=data[i: i + chunk])


def grpc_upload(service, data: bytes, name: str = "hostile", tenant: str = "alice", **kw):
    return service.adapters.Upload(grpc_requests(data, name, **kw), metadata=service.metadata(tenant), timeout=60)


def store_files(service) -> set[Path]:
    root = Path(service.settings.adapter_store_dir)
    return {p.relative_to(root) for p in root.rglob("*") if p.is_file()}


def assert_nothing_stored(service, before: set[Path], tenant: str = "alice") -> None:
    assert store_files(service) == before, "no blob, index or temp file may be left by a rejected upload"
    assert service.engine.store.list(tenant) == []


# REST also takes zipped PEFT folders: a hostile zip is refused by the zip checks, not as a bad header
REST_WORDS = {"peft-zip-bomb": "zip bomb"}


def test_hostile_adapter_files_over_rest(service, cases, goforward):
    before = store_files(service)
    for case, data, words in cases:
        response = rest_upload(service, data)
        try:
            assert_rest_error(response, 400, REST_WORDS.get(case, words))
        except AssertionError as exc:
            raise AssertionError(f"case {case}: {exc}") from None
    assert_rest_error(rest_upload(service, b""), 400, "empty")
    assert_nothing_stored(service, before)
    assert_serves_others(service)


def test_hostile_adapter_files_over_grpc(service, cases, goforward):
    before = store_files(service)
    for case, data, words in cases:
        try:
            assert_grpc_error(lambda data=data: grpc_upload(service, data), INVALID, words)
        except AssertionError as exc:
            raise AssertionError(f"case {case}: {exc}") from None
    assert_grpc_error(lambda: grpc_upload(service, b""), INVALID, "empty")
    assert_nothing_stored(service, before)
    assert_serves_others(service)


def test_files_over_the_size_limit(service, valid, goforward):
    limit = service.settings.max_adapter_bytes
    big = frame(b'{"__metadata__": {"pad": "' + b"x" * (limit + 1024) + b'"}}')
    before = store_files(service)
    assert_rest_error(rest_upload(service, big), 413, "limit")
    assert_grpc_error(lambda: grpc_upload(service, big), TOO_BIG, "exceeds the limit")
    # a header that announces a small file, followed by more bytes than it said
    assert_grpc_error(lambda: grpc_upload(service, valid, size=100), INVALID, "more bytes than")
    assert_nothing_stored(service, before)
    assert_serves_others(service)


@pytest.mark.slow
def test_a_real_100_mb_json_header(service, goforward):
    huge = frame(b'{"__metadata__": {"pad": "' + b"x" * (100 << 20) + b'"}}')
    assert_rest_error(rest_upload(service, huge), 413, "limit")
    assert_grpc_error(lambda: grpc_upload(service, huge), TOO_BIG, "exceeds the limit")
    assert_serves_others(service)


# -- fuzzing: mutated real files and made-up headers --------------------------------------------------

@st.composite
def mutated(draw, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "header-byte", "length"]))
        if op == "flip" and out:
            i = draw(st.integers(0, len(out) - 1))
            out[i] = draw(st.integers(0, 255))
        elif op == "truncate":
            del out[draw(st.integers(0, len(out))):]
        elif op == "insert":
            i = draw(st.integers(0, len(out)))
            out[i:i] = draw(st.binary(min_size=1, max_size=64))
        elif op == "header-byte" and len(out) > 8:
            (n,) = struct.unpack("<Q", bytes(out[:8]))
            i = draw(st.integers(8, min(len(out) - 1, 8 + n)))
            out[i] = draw(st.sampled_from(b'{}[]",:0123456789-eE.x\x00\xff'))
        elif op == "length" and len(out) >= 8:
            out[:8] = draw(st.integers(0, 2**64 - 1)).to_bytes(8, "little")
    return bytes(out)


def test_fuzzed_adapter_files_never_break_the_server(service, valid, goforward):
    """Mutations of a valid file: accepted (a flip inside a tensor is still a valid adapter) or a clean 4xx."""

    @FUZZ
    @given(st.data())
    def check(data):
        blob = data.draw(mutated(valid))
        response = rest_upload(service, blob, name="fuzz", tenant="bob")
        assert response.status_code in (201, 400, 413), response.text[:300]
        assert not any(m in response.text for m in TRACE_MARKERS)
        if response.status_code == 201:
            httpx.delete(f"{service.url}/v1/adapters/fuzz", headers=service.headers("bob"))
        try:
            grpc_upload(service, blob, name="fuzz", tenant="bob")
            service.adapters.Delete(apb.DeleteAdapterRequest(name="fuzz"), metadata=service.metadata("bob"))
        except grpc.RpcError as exc:
            assert exc.code() in (INVALID, TOO_BIG), (exc.code(), exc.details())

    check()
    assert service.engine.store.list("bob") == []
    assert_serves_others(service)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                    max_leaves=20)
ENTRY = st.fixed_dictionaries({"dtype": st.sampled_from(["F32", "F16", "BF16", "I8", "F64", "x"]),
                               "shape": st.lists(st.integers(-2, 1 << 40), max_size=4),
                               "data_offsets": st.lists(st.integers(-2, 1 << 40), max_size=3)})


@FUZZ
@given(header=st.dictionaries(st.text(max_size=40), ENTRY | JSON, max_size=6), body=st.binary(max_size=256))
def test_made_up_headers_are_rejected_cleanly(service, header, body):
    import json

    blob = frame(json.dumps(header).encode(), body)
    response = rest_upload(service, blob, name="made-up", tenant="bob")
    assert_rest_error(response, 400)
    assert_grpc_error(lambda: grpc_upload(service, blob, name="made-up", tenant="bob"), INVALID)


# -- names ------------------------------------------------------------------------------------------

def test_hostile_names_on_every_route(service, valid, goforward):
    root = Path(service.settings.cache_dir)
    everything_before = {p for p in root.rglob("*")}
    md = service.metadata("alice")
    for name in HOSTILE_NAMES:
        shown = repr(name[:40])
        r = rest_upload(service, valid, name=name)
        assert r.status_code == 400, (shown, r.text[:300])
        assert not any(m in r.text for m in TRACE_MARKERS)
        if name:
            assert "invalid adapter name" in r.json()["error"]["message"], shown
        if name not in ("", ".", ".."):  # the HTTP client itself resolves "." and ".." in a URL path
            r = httpx.get(f"{service.url}/v1/adapters/{quote(name, safe='')}", headers=service.headers(), timeout=30)
            assert r.status_code in (307, 400, 404, 405), (shown, r.status_code)
            r = httpx.delete(f"{service.url}/v1/adapters/{quote(name, safe='')}", headers=service.headers(), timeout=30)
            assert r.status_code in (307, 400, 404, 405), (shown, r.status_code)
        r = httpx.post(f"{service.url}/v1/audio/transcriptions", files={"file": ("a.flac", goforward)},
                       data={"model": name}, headers=service.headers(), timeout=60)
        assert r.status_code in (200, 400) if not name else r.status_code == 404, (shown, r.status_code)
        assert len(r.text) < 2000, "an error message must not echo a long name in full"
        assert_grpc_error(lambda name=name: grpc_upload(service, valid, name=name), INVALID, "adapter name")
        if name:
            for call in (lambda name=name: service.adapters.Stat(apb.StatRequest(name=name), metadata=md),
                         lambda name=name: service.adapters.Delete(apb.DeleteAdapterRequest(name=name), metadata=md),
                         lambda name=name: service.recognizer.Recognize(pb.RecognizeRequest(
                             config=pb.RecognitionConfig(adapter=pb.AdapterRef(name=name)), audio=goforward),
                             metadata=md)):
                assert_grpc_error(call, (INVALID, grpc.StatusCode.NOT_FOUND))
    assert {p for p in root.rglob("*")} == everything_before, "a hostile name must not create any file"
    assert_serves_others(service, goforward)


@FUZZ
@given(name=st.text(max_size=80))
def test_any_name_is_stored_only_when_valid(service, name):
    small = adapter_bytes(service.engine.spec, "lora", seed=31)
    ok = bool(NAME_PATTERN.fullmatch(name))
    r = rest_upload(service, small, name=name, tenant="bob")
    assert r.status_code == (201 if ok else 400), (repr(name), r.text[:200])
    try:
        grpc_upload(service, small, name=name, tenant="bob")
        assert ok
    except grpc.RpcError as exc:
        assert not ok and exc.code() == INVALID, (repr(name), exc.code())
    if ok:
        assert [a.name for a in service.engine.store.list("bob")] == [name]
        assert service.engine.store.delete("bob", name)
    tenants = Path(service.settings.adapter_store_dir) / "tenants"
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+\.json", p.name) for p in tenants.iterdir())


def test_unknown_hash_refs_are_not_found(service, goforward):
    md = service.metadata("alice")
    for ref in ("0" * 64, "g" * 64, "A" * 64, "0" * 63):
        error = grpc_error(lambda ref=ref: service.recognizer.Recognize(pb.RecognizeRequest(
            config=pb.RecognitionConfig(adapter=pb.AdapterRef(sha256=ref)), audio=goforward), metadata=md))
        assert error.code() in (INVALID, grpc.StatusCode.NOT_FOUND), (ref, error.code(), error.details())
