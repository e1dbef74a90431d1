"""Faults: SIGKILL in the middle of a batch, a full disk under the adapter store, a backbone that does
not load, and a device client whose server restarts (with and without its adapter store)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
import time

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from splitasr_device import SplitASRClient
from splitasr_device._proto import adapters_pb2 as apb
from splitasr_device._proto import adapters_pb2_grpc, recognizer_pb2_grpc
from splitasr_device._proto import recognizer_pb2 as pb
from splitasr_device.retry import RetryPolicy
from tests.adapter_factory import adapter_bytes
from tests.reliability.conftest import (
    TOKENS,
    assert_grpc_error,
    assert_rest_error,
    assert_serves_others,
    serve_both,
    spawn,
)

AUTH = {"Authorization": f"Bearer {TOKENS['alice']}"}
MD = (("authorization", f"Bearer {TOKENS['alice']}"),)


@pytest.fixture(scope="module")
def spec(tiny_backbone):
    from splitasr.adapters import BackboneSpec

    return BackboneSpec.from_model(tiny_backbone.name, tiny_backbone.model)


def queue_depth(url: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith("splitasr_queue_depth "):
            return float(line.split()[1])
    return 0.0


@pytest.mark.slow
def test_sigkill_during_a_batch_loses_no_adapter(spec, cache_root, tmp_path, real_speech, goforward):
    store = tmp_path / "store"
    server = spawn(cache_root, store, env={"SPLITASR_ADAPTER_SLOTS": "2"})
    kept: dict[str, str] = {}
    try:
        for i, kind in enumerate(("lora", "glora", "saml")):
            r = httpx.post(f"{server.url}/v1/adapters", files={"file": ("a.safetensors", adapter_bytes(spec, kind, i))},
                           data={"name": f"user{i}"}, headers=AUTH, timeout=60)
            assert r.status_code == 201, r.text
            kept[f"user{i}"] = r.json()["sha256"]
        long_audio = real_speech[0]["path"].read_bytes()
        outcomes: list[object] = []

        def transcribe(model: str) -> None:
            try:
                outcomes.append(httpx.post(f"{server.url}/v1/audio/transcriptions", timeout=120, headers=AUTH,
                                           files={"file": ("a.flac", long_audio)}, data={"model": model}))
            except httpx.HTTPError as exc:
                outcomes.append(exc)

        threads = [threading.Thread(target=transcribe, args=(f"user{i % 3}",)) for i in range(6)]
        for t in threads:
            t.start()
        # and a gRPC upload that has sent its header and half its bytes
        partial = adapter_bytes(spec, "lora", seed=9)
        half_sent, hold = threading.Event(), threading.Event()

        def upload_requests():
            yield apb.UploadRequest(header=apb.UploadHeader(name="partial", size=len(partial),
                                                            sha256=hashlib.sha256(partial).hexdigest()))
            yield apb.UploadRequest(chunk=partial[: len(partial) // 2])
            half_sent.set()
            hold.wait(60)

        channel = grpc.insecure_channel(server.grpc_address)
        future = adapters_pb2_grpc.AdaptersStub(channel).Upload.future(upload_requests(), metadata=MD, timeout=60)
        assert half_sent.wait(30)
        deadline = time.monotonic() + 60
        while queue_depth(server.url) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert queue_depth(server.url) >= 1, "the batch never started"
        server.kill()
        hold.set()
        for t in threads:
            t.join(60)
        future.cancel()
        channel.close()
        assert len(outcomes) == 6  # each request got an answer or an error, none hangs
    finally:
        server.kill()
    server = spawn(cache_root, store)
    try:
        listed = httpx.get(f"{server.url}/v1/adapters", headers=AUTH, timeout=30).json()["data"]
        assert {a["id"]: a["sha256"] for a in listed} == kept
        assert not list(store.rglob("*.tmp")), "no partial file may remain"
        assert len(list((store / "blobs").rglob("*.safetensors"))) == len(kept)
        for name in kept:
            r = httpx.post(f"{server.url}/v1/audio/transcriptions", files={"file": ("a.flac", goforward)},
                           data={"model": name}, headers=AUTH, timeout=120)
            assert r.status_code == 200 and r.json()["text"], r.text
    finally:
        server.stop()


def _mount_tmpfs(path, size: int) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, check=False)
    return result.returncode == 0


def test_disk_full_while_storing_an_adapter(spec, backbone_cache_dir, tmp_path, goforward):
    small, big = adapter_bytes(spec, "lora", seed=60), adapter_bytes(spec, "saml", seed=61)
    assert len(small) < len(big)
    disk = tmp_path / "disk"
    size = (len(big) + 256 * 1024) // 4096 * 4096  # room for the big one alone, not for both
    if not _mount_tmpfs(disk, size):
        pytest.skip("needs root and a tmpfs mount to fill a disk")
    try:
        with serve_both(backbone_cache_dir, tmp_path / "root", store_dir=disk) as service:
            def upload(data, name, transport="rest"):
                if transport == "rest":
                    return httpx.post(f"{service.url}/v1/adapters", files={"file": ("a.safetensors", data)},
                                      data={"name": name}, headers=service.headers("alice"), timeout=60)
                header = apb.UploadHeader(name=name, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
                return service.adapters.Upload(iter([apb.UploadRequest(header=header), apb.UploadRequest(chunk=data)]),
                                               metadata=service.metadata("alice"), timeout=60)

            assert upload(small, "small").status_code == 201
            files_before = sorted(p.relative_to(disk) for p in disk.rglob("*") if p.is_file())
            assert_rest_error(upload(big, "big"), 507, "out of disk space", "nothing was stored")
            assert_grpc_error(lambda: upload(big, "big", "grpc"), grpc.StatusCode.RESOURCE_EXHAUSTED, "disk space")
            assert sorted(p.relative_to(disk) for p in disk.rglob("*") if p.is_file()) == files_before
            assert [a.name for a in service.engine.store.list("alice")] == ["small"]
            assert_serves_others(service)
            # once space is freed the same upload goes through
            assert httpx.delete(f"{service.url}/v1/adapters/small", headers=service.headers("alice")).status_code == 200
            assert upload(big, "big").status_code == 201
            r = httpx.post(f"{service.url}/v1/audio/transcriptions", files={"file": ("a.flac", goforward)},
                           data={"model": "big"}, headers=service.headers("alice"), timeout=60)
            assert r.status_code == 200
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.slow
def test_a_backbone_that_fails_to_load(cache_root, tmp_path, goforward):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (broken / "model.bin").write_bytes(b"\0" * 1024)
    (broken / "tokenizer.json").write_text("{}")
    server = spawn(cache_root, tmp_path / "store", env={"SPLITASR_BACKBONE": str(broken)}, wait_ready=False)
    try:
        deadline = time.monotonic() + 120
        body = {}
        while time.monotonic() < deadline:
            assert server.proc.poll() is None, server.log.read_text()[-2000:]
            try:
                r = httpx.get(f"{server.url}/readyz", timeout=2)
                body = r.json()
                if body.get("status") == "failed":
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        assert r.status_code == 503 and body["status"] == "failed" and body["error"], body
        assert httpx.get(f"{server.url}/healthz").status_code == 200  # alive, not ready
        r = httpx.post(f"{server.url}/v1/audio/transcriptions", files={"file": ("a.flac", goforward)},
                       data={"model": "tiny.en"}, headers=AUTH, timeout=30)
        assert_rest_error(r, 503)
        assert "Retry-After" in r.headers
        with grpc.insecure_channel(server.grpc_address) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
            stub = recognizer_pb2_grpc.RecognizerStub(channel)
            assert_grpc_error(lambda: stub.Recognize(pb.RecognizeRequest(audio=goforward), metadata=MD, timeout=10),
                              grpc.StatusCode.UNAVAILABLE)
    finally:
        server.stop()
    log = server.log.read_text()
    assert "failed to load" in log and str(broken) in log, log[-2000:]


@pytest.mark.slow
def test_device_client_across_server_restarts(spec, cache_root, tmp_path, real_speech):
    adapter_file = tmp_path / "me.safetensors"
    adapter_file.write_bytes(adapter_bytes(spec, "lora", seed=70))
    audio = real_speech[-1]["path"]
    server = spawn(cache_root, tmp_path / "store-1")
    ports = {"port": server.port, "grpc_port": server.grpc_port}
    retry = RetryPolicy(attempts=200, base_delay_s=0.2, max_delay_s=1.0)  # rides out a restart of minutes
    client = SplitASRClient(server.grpc_address, token=TOKENS["alice"], retry=retry)
    try:
        first = client.enroll(adapter_file)
        assert first.uploaded_bytes == adapter_file.stat().st_size
        # restart on the same store: the client reconnects by itself and uploads nothing
        server.kill()
        server = spawn(cache_root, tmp_path / "store-1", **ports)
        again = client.enroll(adapter_file)
        assert again.uploaded_bytes == 0 and again.sha256 == first.sha256
        assert "forward" in client.transcribe(audio, adapter=again).text.lower()
        # restart on an empty store (the server lost it): a call made meanwhile waits it out,
        # and the next enroll uploads the adapter again
        server.kill()
        result: dict = {}
        waiting = threading.Thread(target=lambda: result.update(text=client.transcribe(audio).text))
        waiting.start()
        server = spawn(cache_root, tmp_path / "store-2", **ports)
        waiting.join(120)
        assert "forward" in result.get("text", "").lower()
        third = client.enroll(adapter_file)
        assert third.uploaded_bytes == adapter_file.stat().st_size
        assert "forward" in client.transcribe(audio, adapter=third).text.lower()
    finally:
        client.close()
        server.stop()
