"""Per-tenant limits on both transports: the request rate (one budget for REST and gRPC together) and
the adapter quotas (count and bytes). Over a limit: 429 / RESOURCE_EXHAUSTED with a message that says
which limit; other tenants are not affected."""

from __future__ import annotations

import hashlib
import time

import grpc
import httpx
import pytest

from splitasr_device._proto import adapters_pb2 as apb
from tests.adapter_factory import adapter_bytes
from tests.reliability.conftest import assert_grpc_error, assert_rest_error, serve_both

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
PER_MINUTE = 120  # two a second
BURST = 10


@pytest.fixture(scope="module")
def service(backbone_cache_dir, tmp_path_factory):
    with serve_both(backbone_cache_dir, tmp_path_factory.mktemp("limits"), rate_limit_per_minute=PER_MINUTE,
                    rate_limit_burst=BURST, max_adapters_per_tenant=2) as running:
        yield running


def list_rest(service, tenant):
    return httpx.get(f"{service.url}/v1/adapters", headers=service.headers(tenant), timeout=30)


def list_grpc(service, tenant):
    return service.adapters.List(apb.ListAdaptersRequest(), metadata=service.metadata(tenant), timeout=30)


def test_rate_limit_covers_rest_and_grpc_together(service):
    """Alternate transports: the first BURST calls pass, then both transports are refused."""
    began, outcomes, refusals = time.monotonic(), [], {}
    for i in range(3 * BURST):
        if i % 2:
            r = list_rest(service, "alice")
            outcomes.append(r.status_code == 200)
            if r.status_code != 200:
                refusals["rest"] = r
        else:
            try:
                list_grpc(service, "alice")
                outcomes.append(True)
            except grpc.RpcError as exc:
                outcomes.append(False)
                refusals["grpc"] = exc
        if len(refusals) == 2:
            break
    refill = int((time.monotonic() - began) * PER_MINUTE / 60) + 1
    assert all(outcomes[:BURST]) and BURST <= sum(outcomes) <= BURST + refill, outcomes
    r = refusals["rest"]
    assert_rest_error(r, 429, "rate limit", f"{PER_MINUTE} requests per minute")
    assert r.json()["error"]["code"] == "rate_limit_exceeded" and int(r.headers["Retry-After"]) >= 1
    assert refusals["grpc"].code() == EXHAUSTED and "rate limit" in refusals["grpc"].details()
    # another tenant has its own budget; probes have none
    assert list_rest(service, "bob").status_code == 200
    list_grpc(service, "bob")
    assert all(httpx.get(f"{service.url}/healthz").status_code == 200 for _ in range(3 * BURST))
    time.sleep(60 / PER_MINUTE + 0.1)  # one request's worth refills
    assert list_rest(service, "alice").status_code == 200


def test_sustained_rate_just_below_the_limit_is_never_refused(service):
    for _ in range(BURST - 1):  # most of the burst at once, then a steady rate just under the limit
        assert list_rest(service, "carol").status_code == 200
    for _ in range(4):
        time.sleep(60 / PER_MINUTE * 1.15)
        assert list_rest(service, "carol").status_code == 200


def upload(service, tenant, name, data, transport):
    if transport == "rest":
        return httpx.post(f"{service.url}/v1/adapters", files={"file": ("a.safetensors", data)},
                          data={"name": name}, headers=service.headers(tenant), timeout=60)
    header = apb.UploadHeader(name=name, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    return service.adapters.Upload(iter([apb.UploadRequest(header=header), apb.UploadRequest(chunk=data)]),
                                   metadata=service.metadata(tenant), timeout=60)


def test_adapter_count_quota_on_both_transports(service):
    spec = service.engine.spec
    assert upload(service, "dave", "one", adapter_bytes(spec, "lora", seed=50), "rest").status_code == 201
    upload(service, "dave", "two", adapter_bytes(spec, "lora", seed=51), "grpc")
    third = adapter_bytes(spec, "lora", seed=52)
    assert_rest_error(upload(service, "dave", "three", third, "rest"), 413, "quota", "at most 2 adapters")
    assert_grpc_error(lambda: upload(service, "dave", "three", third, "grpc"), EXHAUSTED, "quota")
    # replacing one of your own names is not a new adapter
    assert upload(service, "dave", "one", third, "rest").status_code == 201
    assert [a.name for a in service.engine.store.list("dave")] == ["one", "two"]
    assert upload(service, "erin", "three", third, "rest").status_code == 201  # quotas are per tenant
