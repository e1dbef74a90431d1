"""``SPLITASR_CORS_ORIGINS``: browsers on an allowed origin may call the REST API; others may not.

The real app (its middleware stack in the order ``splitasr serve`` uses) answers real CORS preflights
(``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) and simple requests; the backbone
does not need to load for this, so no model is loaded."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from splitasr.api.rest.app import create_app
from splitasr.config import Settings

ALLOWED = "https://app.example.com"
OTHER = "https://evil.example"
TOKEN = "alice-token-0123456789"


def _client(tmp_path, cors_origins: str | None) -> TestClient:
    settings = Settings(cache_dir=tmp_path / "cache", store_dir=tmp_path / "store", cors_origins=cors_origins,
                        api_keys=f"{TOKEN}:alice", _env_file=None)
    return TestClient(create_app(settings))  # no `with`: the lifespan (and the backbone load) never runs


def _preflight(client: TestClient, origin: str):
    return client.options("/v1/audio/transcriptions", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})


@pytest.fixture
def allowed(tmp_path) -> TestClient:
    return _client(tmp_path, f"{ALLOWED}, https://other-app.example.com")


def test_an_allowed_origin_passes_the_preflight(allowed):
    reply = _preflight(allowed, ALLOWED)
    assert reply.status_code == 200  # answered before the key check: a preflight carries no key
    assert reply.headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in reply.headers["access-control-allow-methods"]
    assert {"authorization", "content-type"} <= {h.strip().lower() for h in
                                                 reply.headers["access-control-allow-headers"].split(",")}
    assert "access-control-allow-credentials" not in reply.headers  # bearer tokens, no cookies


def test_an_allowed_origin_reads_simple_replies_and_errors(allowed):
    health = allowed.get("/healthz", headers={"Origin": ALLOWED})
    assert health.status_code == 200 and health.headers["access-control-allow-origin"] == ALLOWED
    assert "x-request-id" in health.headers["access-control-expose-headers"].lower()
    # a refused key is readable too, so the page can say why
    refused = allowed.get("/v1/models", headers={"Origin": ALLOWED, "Authorization": "Bearer wrong-token-000000"})
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == ALLOWED


def test_other_origins_get_no_cors_headers(allowed):
    reply = _preflight(allowed, OTHER)
    assert reply.status_code == 400 and "access-control-allow-origin" not in reply.headers
    simple = allowed.get("/healthz", headers={"Origin": OTHER})
    assert simple.status_code == 200 and "access-control-allow-origin" not in simple.headers


def test_by_default_no_origin_is_allowed(tmp_path):
    client = _client(tmp_path, None)
    for origin in (ALLOWED, OTHER):
        reply = _preflight(client, origin)
        assert not any(h.startswith("access-control-") for h in reply.headers), reply.headers
        assert reply.status_code in (401, 405)  # no CORS layer: the preflight is an ordinary OPTIONS request
        simple = client.get("/healthz", headers={"Origin": origin})
        assert simple.status_code == 200 and not any(h.startswith("access-control-") for h in simple.headers)


def test_a_wildcard_allows_any_origin(tmp_path):
    client = _client(tmp_path, "*")
    reply = _preflight(client, OTHER)
    assert reply.status_code == 200 and reply.headers["access-control-allow-origin"] == "*"
