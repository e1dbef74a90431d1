"""A server killed (SIGKILL) in the middle of an adapter upload loses nothing it had stored and keeps
no trace of the partial upload after a restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.adapter_factory import adapter_bytes
from tests.integration.conftest import free_port

TOKEN = "crash-test-token-0123456789"


def start(cache_root, store, port, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `splitasr serve` as a subprocess and wait until it is ready."""
    env = {**os.environ, "SPLITASR_CACHE_DIR": str(cache_root), "SPLITASR_STORE_DIR": str(store),
           "SPLITASR_API_KEYS": f"{TOKEN}:alice", "SPLITASR_PORT": str(port), "SPLITASR_ADAPTER_SLOTS": "2",
           **(extra_env or {})}
    log = store.parent / f"server-{port}.log"  # a file, not a pipe: a full pipe would stall the server
    with open(log, "ab") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "splitasr.cli", "serve"], env=env,
                                stdout=subprocess.DEVNULL, stderr=sink)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    pytest.fail("server did not become ready")


def upload(port, name, data):
    return httpx.post(f"http://127.0.0.1:{port}/v1/adapters", files={"file": ("a.safetensors", data)},
                      data={"name": name}, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)


def test_sigkill_during_upload_keeps_store_consistent(tiny_backbone, cache_root, tmp_path, real_speech):
    from splitasr.adapters import BackboneSpec

    spec = BackboneSpec.from_model(tiny_backbone.name, tiny_backbone.model)
    store = tmp_path / "store"
    port = free_port()
    proc = start(cache_root, store, port)
    try:
        first = upload(port, "kept", adapter_bytes(spec, "lora", seed=1))
        assert first.status_code == 201, first.text
        # half of a second upload, then the server dies
        body = adapter_bytes(spec, "lora", seed=2)
        head = (b"--x\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\npartial\r\n"
                b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.safetensors\"\r\n\r\n")
        with socket.create_connection(("127.0.0.1", port)) as sock:
            length = len(head) + len(body) + len(b"\r\n--x--\r\n")
            sock.sendall(
                f"POST /v1/adapters HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: {length}\r\n\r\n".encode()
                + head + body[: len(body) // 2]
            )
            time.sleep(0.5)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    proc = start(cache_root, store, port)
    try:
        listed = httpx.get(f"http://127.0.0.1:{port}/v1/adapters", headers={"Authorization": f"Bearer {TOKEN}"})
        assert [a["id"] for a in listed.json()["data"]] == ["kept"]
        assert listed.json()["data"][0]["sha256"] == first.json()["sha256"]
        assert not list(store.rglob("*.tmp")), "no partial files may remain"
        assert len(list((store / "blobs").rglob("*.safetensors"))) == 1
        r = httpx.post(f"http://127.0.0.1:{port}/v1/audio/transcriptions",
                       files={"file": ("a.flac", real_speech[-1]["path"].read_bytes())}, data={"model": "kept"},
                       headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
        assert r.status_code == 200, r.text
    finally:
        proc.terminate()
        proc.wait(30)
