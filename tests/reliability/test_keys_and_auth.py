"""Keys an operator can get wrong, and clients that keep guessing.

At start, ``splitasr serve`` refuses (exit 2, naming the file and line or the variable) placeholder
tokens, duplicate tokens, malformed lines and tenants that differ only by case; it strips a byte-order
mark and spaces; it reads no ``.env`` unless told to. While serving, an address that fails
authentication too often gets 429 / RESOURCE_EXHAUSTED for a while, with a log line naming it and
a Prometheus counter; other addresses are unaffected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest

from splitasr.errors import InvalidInput
from splitasr.tenants import EXAMPLE_TOKEN, ApiKeys
from splitasr_device._proto import adapters_pb2 as apb
from tests.reliability.conftest import assert_grpc_error, assert_rest_error, serve_both, spawn

ROOT = Path(__file__).resolve().parents[2]
GOOD = "a-good-token-0123456789"
OTHER = "another-token-0123456789"
FAILURES_PER_MINUTE = 5
BLOCK_S = 3.0


def serve_exit(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """``splitasr serve`` that is expected to stop at start (bad keys): its exit code and stderr."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SPLITASR_")}
    return subprocess.run([sys.executable, "-m", "splitasr.cli", "serve", *args], cwd=cwd, env={**clean, **env},
                          capture_output=True, text=True, timeout=120, check=False)


# -- keys at start -----------------------------------------------------------------------------------

@pytest.mark.parametrize("lines, inline, words", [
    ([f"{EXAMPLE_TOKEN} demo"], None, ["keys.txt:1", "placeholder"]),
    (["# comment", "replace-with-my-own-token-please alice"], None, ["keys.txt:2", "placeholder"]),
    ([f"{GOOD} alice", f"{GOOD} bob"], None, ["keys.txt:2", "also given at", "keys.txt:1"]),
    ([f"{GOOD} alice"], f"{GOOD}:bob", ["SPLITASR_API_KEYS (item 1)", "also given at", "keys.txt:1"]),
    ([f"{GOOD} alice", f"{OTHER} alice extra"], None, ["keys.txt:2", "two fields"]),
    ([f"{GOOD} alice", f"{OTHER}"], None, ["keys.txt:2", "two fields"]),
    ([f"{GOOD} Alice"], f"{OTHER}:alice", ["SPLITASR_API_KEYS (item 1)", "'alice'", "'Alice'", "only by case"]),
    ([], f"{GOOD}:alice,{OTHER}", ["SPLITASR_API_KEYS (item 2)", "token:tenant"]),
    ([], "short:alice", ["SPLITASR_API_KEYS (item 1)", "16 characters"]),
])
def test_bad_keys_are_refused_naming_the_line(tmp_path, lines, inline, words):
    keys = tmp_path / "keys.txt"
    keys.write_text("\n".join(lines) + "\n")
    with pytest.raises(InvalidInput) as info:
        ApiKeys.load(keys, inline)
    for word in words:
        assert word.replace("keys.txt", str(keys)) in str(info.value), str(info.value)
    assert GOOD not in str(info.value) and OTHER not in str(info.value), "a key must never be echoed"


def test_splitasr_serve_exits_2_naming_the_file_line_or_variable(tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text(f"{GOOD} alice\n{GOOD} bob\n")
    result = serve_exit(["--api-keys", str(keys)], {}, tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"{keys}:2: this API key is also given at {keys}:1" in result.stderr
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")  # what the compose steps do
    result = serve_exit(["--env-file", ".env"], {}, tmp_path)
    assert result.returncode == 2, result.stderr
    assert "SPLITASR_API_KEYS (item 1): the API key is a placeholder" in result.stderr
    assert EXAMPLE_TOKEN not in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bom_and_spaces_around_keys_are_ignored(tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_bytes(b"\xef\xbb\xbf" + f"{GOOD}\talice  \n".encode())
    loaded = ApiKeys.load(keys, f"  {OTHER} : bob , ")
    assert loaded.authenticate(f"Bearer {GOOD}") == "alice"  # the first key of a BOM file works
    assert loaded.authenticate(f"Bearer {OTHER}") == "bob"
    assert loaded.describe() == f"2 API keys for 2 tenants (1 from {keys}, 1 from SPLITASR_API_KEYS)"


def test_a_compose_env_file_does_not_change_a_local_server(backbone_cache_dir, tmp_path, goforward):
    """After `cp .env.example .env`, `splitasr serve` from that folder still runs the README quickstart:
    no .env is read unless named, and the start-up log says where the keys came from."""
    root = tmp_path / "work"
    root.mkdir()
    shutil.copy(ROOT / ".env.example", root / ".env")
    server = spawn(backbone_cache_dir.parent, root / "store", env={"SPLITASR_API_KEYS": ""})
    try:
        r = httpx.post(f"{server.url}/v1/audio/transcriptions", files={"file": ("a.flac", goforward)},
                       data={"model": "tiny.en"}, timeout=120)
        assert r.status_code == 200 and "forward" in r.json()["text"].lower(), r.text
    finally:
        server.stop()
    log = server.log.read_text()
    assert "no API keys (neither SPLITASR_API_KEYS_FILE nor SPLITASR_API_KEYS is set): one open tenant" in log


# -- failed authentication per client address ----------------------------------------------------------

@pytest.fixture(scope="module")
def service(backbone_cache_dir, tmp_path_factory):
    with serve_both(backbone_cache_dir, tmp_path_factory.mktemp("auth"), auth_failures_per_minute=FAILURES_PER_MINUTE,
                    auth_block_seconds=BLOCK_S) as running:
        yield running


def metric(service, name: str, transport: str) -> float:
    text = httpx.get(f"{service.url}/metrics", timeout=10).text
    line = next((x for x in text.splitlines() if x.startswith(f'{name}{{transport="{transport}"}}')), None)
    return float(line.split()[-1]) if line else 0.0


def from_address(address: str) -> httpx.Client:
    """A client whose connections come from ``address`` (any 127.x.y.z reaches the server on 127.0.0.1)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30)


def test_an_address_that_keeps_guessing_is_blocked(service, caplog):
    url = f"{service.url}/v1/adapters"
    before = metric(service, "splitasr_auth_failures_total", "rest")
    with from_address("127.0.0.3") as guesser, from_address("127.0.0.4") as bystander:
        for i in range(FAILURES_PER_MINUTE + 1):
            assert_rest_error(guesser.get(url, headers={"Authorization": f"Bearer wrong-token-{i:012d}"}), 401)
        # now blocked: even the right key is refused, before it is looked at
        blocked = guesser.get(url, headers=service.headers("alice"))
        assert_rest_error(blocked, 429, "too many failed authentications")
        assert 1 <= int(blocked.headers["Retry-After"]) <= BLOCK_S + 1
        assert bystander.get(url, headers=service.headers("bob")).status_code == 200
        # one wrong key from the bystander is only a 401
        assert_rest_error(bystander.get(url, headers={"Authorization": "Bearer wrong-token-bystander"}), 401)
        time.sleep(BLOCK_S + 0.5)
        assert guesser.get(url, headers=service.headers("alice")).status_code == 200
    assert metric(service, "splitasr_auth_failures_total", "rest") - before == FAILURES_PER_MINUTE + 2
    assert metric(service, "splitasr_auth_blocked_total", "rest") >= 1
    lines = [r.getMessage() for r in caplog.records if r.name == "splitasr.tenants"]
    assert any("blocking client 127.0.0.3" in line for line in lines), lines
    assert not any("127.0.0.4" in line for line in lines)


def test_grpc_guesses_count_and_are_blocked_too(service):
    md_wrong = (("authorization", "Bearer wrong-grpc-token-0123456789"),)
    list_call = service.adapters.List
    for _ in range(FAILURES_PER_MINUTE + 1):
        assert_grpc_error(lambda: list_call(apb.ListAdaptersRequest(), metadata=md_wrong, timeout=10),
                          grpc.StatusCode.UNAUTHENTICATED)
    assert_grpc_error(lambda: list_call(apb.ListAdaptersRequest(), metadata=service.metadata("alice"), timeout=10),
                      grpc.StatusCode.RESOURCE_EXHAUSTED, "too many failed authentications")
    # REST from the same address (127.0.0.1) shares the block
    assert_rest_error(httpx.get(f"{service.url}/v1/adapters", headers=service.headers("alice"), timeout=10), 429)
    assert metric(service, "splitasr_auth_failures_total", "grpc") >= FAILURES_PER_MINUTE + 1
    time.sleep(BLOCK_S + 0.5)
    list_call(apb.ListAdaptersRequest(), metadata=service.metadata("alice"), timeout=10)


async def _realtime_first_event(service, token: str, address: str, origin: str | None = None) -> tuple[dict, int]:
    """Open /v1/realtime from ``address`` with ``token``: the first event and the close code."""
    import websockets

    url = service.url.replace("http://", "ws://") + "/v1/realtime?intent=transcription"
    headers = {"Authorization": f"Bearer {token}", **({"Origin": origin} if origin else {})}
    async with websockets.connect(url, additional_headers=headers, local_addr=(address, 0)) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if first["type"] == "session.created":
            return first, 1000
        with contextlib.suppress(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 30)
        return first, ws.close_code


def test_realtime_guesses_count_and_are_blocked_too(service):
    before = metric(service, "splitasr_auth_failures_total", "realtime")  # the registry is the process's

    async def guess() -> None:
        for i in range(FAILURES_PER_MINUTE + 1):
            event, code = await _realtime_first_event(service, f"wrong-realtime-token-{i:06d}", "127.0.0.6")
            assert event["error"]["code"] == "unauthenticated" and code == 1008, event
        event, code = await _realtime_first_event(service, TOKENS_ALICE(service), "127.0.0.6")
        assert "too many failed authentications" in event["error"]["message"] and code == 1013, (event, code)
        event, _ = await _realtime_first_event(service, TOKENS_ALICE(service), "127.0.0.7")  # a bystander
        assert event["type"] == "session.created", event

    asyncio.run(guess())
    assert metric(service, "splitasr_auth_failures_total", "realtime") - before == FAILURES_PER_MINUTE + 1
    assert metric(service, "splitasr_auth_blocked_total", "realtime") >= 1


def test_realtime_pages_from_other_origins_are_refused(service):
    async def connect() -> None:
        token = TOKENS_ALICE(service)
        event, _ = await _realtime_first_event(service, token, "127.0.0.8", origin="https://evil.example")
        assert event["error"]["code"] == "permission_denied" and "SPLITASR_CORS_ORIGINS" in event["error"]["message"]
        own = service.url  # the server's own page (/ui/) connects from its own origin
        event, _ = await _realtime_first_event(service, token, "127.0.0.8", origin=own)
        assert event["type"] == "session.created", event

    asyncio.run(connect())


def TOKENS_ALICE(service) -> str:
    return service.headers("alice")["Authorization"].removeprefix("Bearer ")


def test_probes_need_no_key_and_are_never_blocked(service):
    with from_address("127.0.0.5") as client:
        for _ in range(FAILURES_PER_MINUTE + 1):
            client.get(f"{service.url}/v1/models", headers={"Authorization": "Bearer nope-nope-nope-nope"})
        assert client.get(f"{service.url}/healthz").status_code == 200
        assert client.get(f"{service.url}/readyz").status_code == 200
        assert_rest_error(client.get(f"{service.url}/v1/models", headers={"Authorization": "Bearer nope"}), 429)
