"""The Ray Serve application with its adapter store in S3: 2 replicas on a real local Ray cluster and
a real S3-compatible server on loopback (moto's, over HTTP), no shared folder. Marked ``ray``."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

pytest.importorskip("ray.serve")
pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

from splitasr.adapters import AdapterLimits, BackboneSpec, attach_bank
from splitasr.backbones.whisper import WhisperBackbone
from splitasr.config import Settings
from tests.adapter_factory import adapter_bytes
from tests.integration.conftest import TOKENS, free_port
from tests.scale.cluster import start_ray

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

APP = "splitasr-s3"
BUCKET = "splitasr-replicas"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
AUTH = {"Authorization": f"Bearer {TOKENS['alice']}"}


@pytest.fixture(scope="module")
def s3_cluster(cache_root, tmp_path_factory, real_speech) -> Iterator[dict]:
    import boto3
    import ray
    from ray import serve

    from splitasr.scale.app import build_app

    backbone = WhisperBackbone.load("tiny.en", cache_dir=cache_root / "backbones", device="cpu")
    attach_bank(backbone.model, "all", 1, AdapterLimits())
    spec = BackboneSpec.from_model(backbone.name, backbone.model)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in CREDENTIALS.items():  # the driver's environment: Ray's workers inherit it
            patch.setenv(key, value)
        server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
        server.start()
        endpoint = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=BUCKET)
        unused = tmp_path_factory.mktemp("no-shared-folder")
        settings = Settings(host="127.0.0.1", port=free_port(), grpc_port=0, cache_dir=cache_root, store_dir=unused,
                            adapter_store_url=f"s3://{BUCKET}/splitasr", adapter_store_endpoint_url=endpoint,
                            adapter_slots=1, max_queued_requests=8, max_batch_rows=8, replica_cpus=0.5,
                            ingress_cpus=0.5, api_keys=",".join(f"{t}:{n}" for n, t in TOKENS.items()),
                            _env_file=None)
        start_ray(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": dict(CREDENTIALS)})
        try:
            serve.start(http_options={"host": settings.host, "port": settings.port})
            serve.run(build_app(settings, 2), name=APP, route_prefix="/")
            url = f"http://127.0.0.1:{settings.port}"
            deadline = time.monotonic() + 300
            while httpx.get(f"{url}/readyz", timeout=10).status_code != 200:
                assert time.monotonic() < deadline, "the ingress did not become ready"
                time.sleep(0.5)
            audio = next(r for r in real_speech if r["audio_filepath"].endswith("goforward.flac"))["path"]
            yield {"url": url, "client": client, "spec": spec, "audio": audio.read_bytes(), "unused": unused}
        finally:
            serve.shutdown()
            ray.shutdown()
            server.stop()


def lookups(name: str) -> dict[str, str | None]:
    """replica id -> the sha256 that alice's ``name`` has in that replica's view of the store."""
    from ray import serve

    handle, answers = serve.get_deployment_handle("SplitASRReplica", app_name=APP), {}
    for _ in range(60):
        tag, sha = handle.lookup.remote("alice", name).result(timeout_s=60)
        answers[tag] = sha
        if len(answers) == 2:
            return answers
    pytest.fail(f"only {len(answers)} replicas answered")


def test_replicas_share_adapters_through_s3_alone(s3_cluster):
    url, client = s3_cluster["url"], s3_cluster["client"]

    def transcribe(model: str) -> httpx.Response:
        return httpx.post(f"{url}/v1/audio/transcriptions", files={"file": ("a.flac", s3_cluster["audio"])},
                          data={"model": model}, headers=AUTH, timeout=300)

    shas = {}
    for seed, name in enumerate(("a", "b"), start=1):
        r = httpx.post(f"{url}/v1/adapters", data={"name": name}, headers=AUTH, timeout=60,
                       files={"file": ("x.safetensors", adapter_bytes(s3_cluster["spec"], "lora", seed))})
        assert r.status_code == 201, r.text
        shas[name] = r.json()["sha256"]
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="splitasr/")["Contents"]}
    assert {f"splitasr/blobs/{s[:2]}/{s}.safetensors" for s in shas.values()} | {"splitasr/tenants/alice.json"} == keys
    assert list(s3_cluster["unused"].rglob("*.safetensors")) == []  # nothing went to a folder
    assert set(lookups("a").values()) == {shas["a"]}  # both replicas read the bucket's index
    replicas = {}
    for name in ("a", "b"):
        answers = [transcribe(name) for _ in range(3)]
        assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
        replicas[name] = {r.headers["X-SplitASR-Replica"] for r in answers}
    assert len(replicas["a"] | replicas["b"]) == 2, f"a and b should load on different replicas: {replicas}"
    assert httpx.delete(f"{url}/v1/adapters/a", headers=AUTH, timeout=30).status_code == 200
    assert set(lookups("a").values()) == {None}
    assert transcribe("a").status_code == 404 and transcribe("b").status_code == 200
