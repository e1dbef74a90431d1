"""Adapters over REST: upload, list, use, delete — and tenant isolation by name and by hash."""

from __future__ import annotations

import httpx
import pytest

from tests.adapter_factory import adapter_bytes


@pytest.fixture(scope="module")
def alice_adapter(rest_server) -> dict:
    data = adapter_bytes(rest_server.engine.spec, "lora", seed=7)
    r = httpx.post(f"{rest_server.url}/v1/adapters", files={"file": ("me.safetensors", data)},
                   data={"name": "alice-voice"}, headers=rest_server.headers("alice"), timeout=60)
    assert r.status_code == 201, r.text
    return r.json()


def get(server, path, tenant):
    return httpx.get(f"{server.url}{path}", headers=server.headers(tenant), timeout=60)


def transcribe(server, tenant, model, audio_path):
    return httpx.post(f"{server.url}/v1/audio/transcriptions", files={"file": ("a.flac", audio_path.read_bytes())},
                      data={"model": model}, headers=server.headers(tenant), timeout=120)


def test_owner_lists_describes_and_uses_the_adapter(rest_server, alice_adapter, real_speech):
    assert alice_adapter["kind"] == "lora" and len(alice_adapter["sha256"]) == 64
    names = [a["id"] for a in get(rest_server, "/v1/adapters", "alice").json()["data"]]
    assert "alice-voice" in names
    assert get(rest_server, "/v1/adapters/alice-voice", "alice").json()["sha256"] == alice_adapter["sha256"]
    assert "alice-voice" in [m["id"] for m in get(rest_server, "/v1/models", "alice").json()["data"]]
    r = transcribe(rest_server, "alice", "alice-voice", real_speech[-1]["path"])
    assert r.status_code == 200 and r.json()["text"]


def test_other_tenant_cannot_see_or_use_it(rest_server, alice_adapter, real_speech):
    assert "alice-voice" not in [a["id"] for a in get(rest_server, "/v1/adapters", "bob").json()["data"]]
    assert "alice-voice" not in [m["id"] for m in get(rest_server, "/v1/models", "bob").json()["data"]]
    assert get(rest_server, "/v1/adapters/alice-voice", "bob").status_code == 404
    assert get(rest_server, f"/v1/adapters/{alice_adapter['sha256']}", "bob").status_code == 404
    for model in ("alice-voice", alice_adapter["sha256"]):
        r = transcribe(rest_server, "bob", model, real_speech[-1]["path"])
        assert r.status_code == 404, r.text
        assert r.json()["error"]["message"].endswith("available: tiny.en, whisper-1")


def test_other_tenant_cannot_delete_or_overwrite_it(rest_server, alice_adapter):
    r = httpx.delete(f"{rest_server.url}/v1/adapters/alice-voice", headers=rest_server.headers("bob"))
    assert r.status_code == 404
    # bob's upload under the same name lands in bob's namespace and leaves alice's untouched
    other = adapter_bytes(rest_server.engine.spec, "glora", seed=8)
    r = httpx.post(f"{rest_server.url}/v1/adapters", files={"file": ("x.safetensors", other)},
                   data={"name": "alice-voice"}, headers=rest_server.headers("bob"), timeout=60)
    assert r.status_code == 201
    assert get(rest_server, "/v1/adapters/alice-voice", "alice").json()["sha256"] == alice_adapter["sha256"]
    assert get(rest_server, "/v1/adapters/alice-voice", "bob").json()["kind"] == "glora"
    httpx.delete(f"{rest_server.url}/v1/adapters/alice-voice", headers=rest_server.headers("bob"))
    assert get(rest_server, "/v1/adapters/alice-voice", "alice").status_code == 200


def test_missing_or_wrong_key_is_401(rest_server):
    assert httpx.get(f"{rest_server.url}/v1/adapters").status_code == 401
    r = httpx.get(f"{rest_server.url}/v1/models", headers={"Authorization": "Bearer wrong-token-000000000"})
    assert r.status_code == 401 and "invalid api key" in r.json()["error"]["message"].lower()


@pytest.mark.parametrize("payload, words", [
    (b"not a safetensors file at all", "header"),
    (b"\x80\x04\x95" + b"pickle" * 20, "header"),
])
def test_invalid_adapter_files_are_rejected(rest_server, payload, words):
    r = httpx.post(f"{rest_server.url}/v1/adapters", files={"file": ("bad.safetensors", payload)},
                   data={"name": "bad"}, headers=rest_server.headers("bob"), timeout=60)
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]["message"].lower()
    assert get(rest_server, "/v1/adapters/bad", "bob").status_code == 404


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b", "x" * 65, "bad\nname", ".hidden"])
def test_hostile_names_are_rejected(rest_server, name):
    data = adapter_bytes(rest_server.engine.spec, "lora", seed=9)
    r = httpx.post(f"{rest_server.url}/v1/adapters", files={"file": ("a.safetensors", data)},
                   data={"name": name}, headers=rest_server.headers("bob"), timeout=60)
    assert r.status_code == 400 and "invalid adapter name" in r.json()["error"]["message"]


def test_wrong_backbone_adapter_is_rejected(rest_server):
    from dataclasses import replace

    from splitasr.adapters import adapter_to_bytes
    from tests.adapter_factory import random_adapter

    adapter = random_adapter(rest_server.engine.spec, "lora", seed=3)
    adapter = replace(adapter, backbone_name="whisper-large", backbone_fingerprint="0" * 64)
    r = httpx.post(f"{rest_server.url}/v1/adapters", files={"file": ("a.safetensors", adapter_to_bytes(adapter))},
                   data={"name": "foreign"}, headers=rest_server.headers("bob"), timeout=60)
    assert r.status_code == 400 and "whisper-large" in r.json()["error"]["message"]
