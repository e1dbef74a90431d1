"""The adapter store in S3: a real S3-compatible server on loopback (moto's, over HTTP), boto3 talking
to it. Two stores on one bucket stand for two replicas on two machines; the REST server transcribes
with an adapter that lives only in the bucket."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from pydantic import ValidationError

from splitasr.config import Settings, describe_invalid_settings
from splitasr.errors import InvalidInput, NotFound, StoredAdapterCorrupt, StoreUnavailable, TooLarge

pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

from splitasr.storage.s3 import S3AdapterStore  # after the skips: needs boto3
from tests.integration.conftest import TOKENS, free_port, start_server

BUCKET = "splitasr-adapters"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def accept(data: bytes) -> str:
    """A validator that takes any bytes as a LoRA (the store's own behaviour is under test here)."""
    return "lora"


@dataclass
class S3:
    endpoint: str
    client: object  # a boto3 S3 client of its own: the test's view of the bucket

    def store(self, prefix: str, **kwargs) -> S3AdapterStore:
        return S3AdapterStore(f"s3://{BUCKET}/{prefix}", endpoint_url=self.endpoint, **kwargs)

    def keys(self, prefix: str) -> set[str]:
        reply = self.client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return {o["Key"] for o in reply.get("Contents", ())}


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    import boto3

    with pytest.MonkeyPatch.context() as patch:
        for key, value in CREDENTIALS.items():
            patch.setenv(key, value)
        server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=BUCKET)
        try:
            yield S3(endpoint, client)
        finally:
            server.stop()


def test_upload_list_get_read_delete(s3):
    store = s3.store("basic")
    record = store.put("alice", "mine", b"adapter one", accept)
    assert record.sha256 == hashlib.sha256(b"adapter one").hexdigest() and record.size == 11
    assert [r.name for r in store.list("alice")] == ["mine"] and store.list("bob") == []
    assert store.get("alice", "mine") == record and store.find_by_hash("alice", record.sha256) == record
    assert store.find_by_hash("bob", record.sha256) is None  # another tenant's hash gives nothing
    assert store.read(record.sha256) == b"adapter one"
    assert s3.keys("basic/") == {f"basic/blobs/{record.sha256[:2]}/{record.sha256}.safetensors",
                                 "basic/tenants/alice.json"}
    replaced = store.put("alice", "mine", b"adapter two", accept)
    assert store.get("alice", "mine").sha256 == replaced.sha256 != record.sha256
    assert store.delete("alice", "mine") == replaced
    assert store.list("alice") == []
    with pytest.raises(NotFound):
        store.get("alice", "mine")
    with pytest.raises(NotFound):
        store.delete("alice", "mine")
    with pytest.raises(NotFound):
        s3.store("basic").read("ab" * 32)  # never stored
    with pytest.raises(InvalidInput):
        store.put("alice", "../escape", b"x", accept)
    with pytest.raises(InvalidInput, match="corrupt"):
        store.put("alice", "sent", b"what arrived", accept, expected_sha256=hashlib.sha256(b"what was sent").hexdigest())
    assert store.list("alice") == []


def test_two_replicas_see_each_others_uploads_and_deletes(s3):
    one, two = s3.store("shared"), s3.store("shared")
    record = one.put("alice", "voice", b"voice adapter", accept)
    assert two.get("alice", "voice") == record and two.read(record.sha256) == b"voice adapter"
    two.put("alice", "other", b"other adapter", accept)
    assert [r.name for r in one.list("alice")] == ["other", "voice"]
    two.delete("alice", "voice")
    with pytest.raises(NotFound):
        one.get("alice", "voice")


def test_concurrent_uploads_through_two_replicas_keep_every_name_and_the_quota(s3):
    stores = [s3.store("quota", max_adapters_per_tenant=25), s3.store("quota", max_adapters_per_tenant=25)]
    refused: list[str] = []

    def upload(worker: int) -> None:
        for i in range(10):
            try:
                stores[worker % 2].put("alice", f"w{worker}-{i}", f"{worker}/{i}".encode(), accept)
            except TooLarge:
                refused.append(f"w{worker}-{i}")

    threads = [threading.Thread(target=upload, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    names = {r.name for r in stores[0].list("alice")}
    assert len(names) == 25 and len(refused) == 15 and not names & set(refused)
    for name in names:  # every name kept points at its own bytes
        worker, i = name[1:].split("-")
        assert stores[1].read(stores[1].get("alice", name).sha256) == f"{worker}/{i}".encode()


def test_a_corrupt_object_is_refused(s3):
    record = s3.store("corrupt").put("alice", "mine", b"the real adapter", accept)
    s3.client.put_object(Bucket=BUCKET, Key=f"corrupt/blobs/{record.sha256[:2]}/{record.sha256}.safetensors",
                         Body=b"the real adaptor")  # changed behind the store's back
    other = s3.store("corrupt")  # another replica: nothing cached
    with pytest.raises(StoredAdapterCorrupt, match="does not match its sha256"):
        other.read(record.sha256)
    with pytest.raises(StoredAdapterCorrupt), other.pinned(record.sha256):
        pass


def test_deleted_blobs_are_swept_but_a_request_holding_one_keeps_it(s3):
    holder, other = s3.store("sweep"), s3.store("sweep", blob_grace_s=0)
    kept = holder.put("alice", "kept", b"kept adapter", accept)
    held = holder.put("alice", "held", b"held adapter", accept)
    gone = holder.put("bob", "gone", b"gone adapter", accept)
    assert s3.store("sweep").sweep()["removed_blobs"] == 0  # nothing unnamed yet
    other.delete("bob", "gone")
    assert s3.store("sweep").sweep()["removed_blobs"] == 0  # unnamed, but written within the grace period
    with holder.pinned(held.sha256):
        other.delete("alice", "held")
        assert other.sweep()["removed_blobs"] == 2
        assert holder.read(held.sha256) == b"held adapter"  # the request still has it
    blobs = {k.rsplit("/", 1)[-1].removesuffix(".safetensors") for k in s3.keys("sweep/blobs/")}
    assert blobs == {kept.sha256}
    with pytest.raises(NotFound, match="deleted before"), s3.store("sweep").pinned(gone.sha256):
        pass
    assert holder.pinned_count() == 0


def test_an_upload_racing_a_sweep_keeps_its_blob(s3):
    """The same bytes deleted under one name and uploaded again under another while a thread sweeps
    with no grace period: the new name never loses its blob. (Both repairs run here, as the warnings
    show: the sweep putting back a blob named meanwhile, and an upload writing again a blob swept
    between its two writes; each ran several times in every one of three runs.)"""
    uploader, sweeper = s3.store("race"), s3.store("race", blob_grace_s=0)
    stop = threading.Event()

    def sweep() -> None:
        while not stop.is_set():
            sweeper.sweep()

    thread = threading.Thread(target=sweep)
    thread.start()
    try:
        for i in range(20):
            if i:  # unnamed for a moment: the sweeper may take the blob while the next upload writes it
                uploader.delete("alice", f"n{i - 1}")
            record = uploader.put("alice", f"n{i}", b"the same bytes", accept)
            assert s3.store("race").read(record.sha256) == b"the same bytes", i
    finally:
        stop.set()
        thread.join(60)
    assert s3.store("race").read(uploader.get("alice", "n19").sha256) == b"the same bytes"


def test_an_unreachable_store_is_a_retryable_error(s3):
    with pytest.raises(StoreUnavailable, match="could not be reached"):
        S3AdapterStore(f"s3://{BUCKET}/x", endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StoreUnavailable, match="refused"):
        S3AdapterStore("s3://no-such-bucket/x", endpoint_url=s3.endpoint)
    from splitasr.api.rpc.interceptors import status_for

    assert StoreUnavailable.http_status == 503 and StoredAdapterCorrupt.http_status == 500
    assert status_for(StoreUnavailable("x"))[0].name == "UNAVAILABLE"  # retryable, as REST's 503 + Retry-After
    assert status_for(StoredAdapterCorrupt("x"))[0].name == "DATA_LOSS"


def test_the_settings_name_a_bad_store_url():
    for variables in ({"SPLITASR_ADAPTER_STORE_URL": "http://bucket/prefix"},
                      {"SPLITASR_ADAPTER_STORE_URL": "s3:///prefix"},
                      {"SPLITASR_ADAPTER_STORE_ENDPOINT_URL": "minio:9000"}):
        with pytest.MonkeyPatch.context() as patch:
            for key, value in variables.items():
                patch.setenv(key, value)
            with pytest.raises(ValidationError) as err:
                Settings(_env_file=None)
        assert next(iter(variables)) in describe_invalid_settings(err.value)


@pytest.fixture(scope="module")
def s3_server(s3, backbone_cache_dir, tmp_path_factory):
    """A REST server whose adapter store is the bucket (its own tiny.en: its slot pool owns the bank)."""
    from splitasr.backbones.whisper import WhisperBackbone
    from splitasr.engine.engine import Engine

    backbone = WhisperBackbone.load("tiny.en", cache_dir=backbone_cache_dir, device="cpu")
    settings = Settings(host="127.0.0.1", port=free_port(), cache_dir=tmp_path_factory.mktemp("s3-server"),
                        adapter_store_url=f"s3://{BUCKET}/served", adapter_store_endpoint_url=s3.endpoint,
                        adapter_slots=2, api_keys=",".join(f"{token}:{tenant}" for tenant, token in TOKENS.items()),
                        _env_file=None)
    engine = Engine(settings, backbone=backbone)
    server, thread = start_server(settings, engine)
    url = f"http://127.0.0.1:{settings.port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server did not become ready"
        time.sleep(0.2)
    yield url, engine
    server.should_exit = True
    thread.join(30)
    engine.close(10)


def test_the_server_transcribes_with_an_adapter_that_lives_in_s3(s3, s3_server, real_speech):
    from tests.adapter_factory import adapter_bytes

    url, engine = s3_server
    auth = {"Authorization": f"Bearer {TOKENS['alice']}"}
    audio = next(r for r in real_speech if r["audio_filepath"].endswith("goforward.flac"))["path"].read_bytes()

    def transcribe(model: str) -> httpx.Response:
        return httpx.post(f"{url}/v1/audio/transcriptions", files={"file": ("a.flac", audio)},
                          data={"model": model}, headers=auth, timeout=120)

    # uploaded by another replica straight into the bucket: this server has never seen it
    data = adapter_bytes(engine.spec, "lora", 7)
    other = s3.store("served")
    record = other.put("alice", "voice", data, engine.validate_kind)
    assert engine.store.get("alice", "voice") == record
    base, adapted = transcribe("tiny.en"), transcribe("voice")
    assert base.status_code == 200 and adapted.status_code == 200, adapted.text
    assert adapted.json()["text"].strip()
    # an upload through REST lands in the bucket, where the other replica finds it
    r = httpx.post(f"{url}/v1/adapters", files={"file": ("b.safetensors", adapter_bytes(engine.spec, "lora", 8))},
                   data={"name": "second"}, headers=auth, timeout=60)
    assert r.status_code == 201, r.text
    assert other.get("alice", "second").sha256 == r.json()["sha256"]
    assert transcribe("second").status_code == 200
    # deleted through the other replica: this server answers 404, not 500
    other.delete("alice", "voice")
    missing = transcribe("voice")
    assert missing.status_code == 404, missing.text
    assert httpx.get(f"{url}/v1/adapters/voice", headers=auth, timeout=30).status_code == 404
    # changed behind the store's back: refused with a clear error, and the server keeps serving
    bad = adapter_bytes(engine.spec, "lora", 9)
    bad_record = other.put("alice", "tampered", bad, engine.validate_kind)
    s3.client.put_object(Bucket=BUCKET, Key=f"served/blobs/{bad_record.sha256[:2]}/{bad_record.sha256}.safetensors",
                         Body=bad[:-1] + bytes([bad[-1] ^ 1]))
    refused = transcribe("tampered")
    assert refused.status_code == 500 and "does not match its sha256" in refused.text, refused.text
    assert transcribe("second").status_code == 200
