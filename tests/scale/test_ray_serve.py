"""The Ray Serve application on a real local Ray cluster: 2 replicas of tiny.en, one shared store.

Bounded as the issue asks (``ray.init(num_cpus=2)``, 2 replicas, one adapter slot each, so that three
adapters force evictions). Marked ``ray`` (excluded by default; ``pytest -m ray``) and skipped when
Ray Serve is not installed (``pip install -e ".[server,dev,scale]"``).
"""

from __future__ import annotations

import collections
import concurrent.futures
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

pytest.importorskip("ray.serve")

from splitasr.adapters import AdapterLimits, BackboneSpec, attach_bank
from splitasr.backbones.whisper import WhisperBackbone
from splitasr.config import Settings
from tests.adapter_factory import adapter_bytes
from tests.scale.cluster import start_ray

TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789ab"}

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

REPLICAS = 2
APP = "splitasr"


@dataclass
class Cluster:
    url: str
    grpc_address: str
    metrics_url: str
    spec: BackboneSpec
    audio: bytes
    settings: Settings

    def headers(self, tenant: str = "alice") -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKENS[tenant]}"}

    def upload(self, name: str, data: bytes, tenant: str = "alice") -> str:
        r = httpx.post(f"{self.url}/v1/adapters", files={"file": ("a.safetensors", data)}, data={"name": name},
                       headers=self.headers(tenant), timeout=60)
        assert r.status_code == 201, r.text
        return r.json()["sha256"]

    def transcribe(self, model: str, tenant: str = "alice") -> httpx.Response:
        return httpx.post(f"{self.url}/v1/audio/transcriptions", files={"file": ("a.flac", self.audio)},
                          data={"model": model}, headers=self.headers(tenant), timeout=300)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def replica_handle():
    from ray import serve

    return serve.get_deployment_handle("SplitASRReplica", app_name=APP)


def on_every_replica(method: str, *args) -> dict[str, object]:
    """Call a replica method until every replica has answered once (Serve picks the replica)."""
    handle, answers = replica_handle(), {}
    for _ in range(60):
        answer = getattr(handle, method).remote(*args).result(timeout_s=60)
        tag = answer[0] if isinstance(answer, tuple) else answer["replica"]
        answers[tag] = answer
        if len(answers) == REPLICAS:
            return answers
    pytest.fail(f"only {len(answers)} of {REPLICAS} replicas answered")


@pytest.fixture(scope="module")
def cluster(cache_root, tmp_path_factory, real_speech) -> Iterator[Cluster]:
    import ray
    from ray import serve

    from splitasr.scale.app import build_app

    # the spec adapters are made for: a backbone of our own (the session's shared one stays bank-free)
    backbone = WhisperBackbone.load("tiny.en", cache_dir=cache_root / "backbones", device="cpu")
    attach_bank(backbone.model, "all", 1, AdapterLimits())
    spec = BackboneSpec.from_model(backbone.name, backbone.model)
    settings = Settings(host="127.0.0.1", port=free_port(), grpc_port=free_port(), cache_dir=cache_root,
                        store_dir=tmp_path_factory.mktemp("shared-store"), adapter_slots=1,
                        max_queued_requests=8, max_batch_rows=8, replica_cpus=0.5, ingress_cpus=0.5,
                        api_keys=",".join(f"{token}:{tenant}" for tenant, token in TOKENS.items()),
                        _env_file=None)
    metrics_port = free_port()
    # replicas report their metrics to Ray's agent every 0.5 s (10 s by default): gauges sampled during a burst
    start_ray(num_cpus=2, include_dashboard=False, _metrics_export_port=metrics_port,
              _system_config={"metrics_report_interval_ms": 500})
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(build_app(settings, REPLICAS), name=APP, route_prefix="/")
        url = f"http://127.0.0.1:{settings.port}"
        deadline = time.monotonic() + 300
        while httpx.get(f"{url}/readyz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "the ingress did not become ready"
            time.sleep(0.5)
        audio = next(r for r in real_speech if r["audio_filepath"].endswith("goforward.flac"))["path"].read_bytes()
        yield Cluster(url, f"127.0.0.1:{settings.grpc_port}", f"http://127.0.0.1:{metrics_port}/metrics", spec,
                      audio, settings)
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def adapters(cluster) -> dict[str, str]:
    """alice's adapters a, b and c: name -> sha256."""
    return {name: cluster.upload(name, adapter_bytes(cluster.spec, "lora", seed)) for seed, name in
            enumerate(("a", "b", "c"), start=1)}


def replicas_hit(cluster: Cluster, model: str, count: int) -> collections.Counter:
    hits = collections.Counter()
    for _ in range(count):
        r = cluster.transcribe(model)
        assert r.status_code == 200, r.text
        hits[r.headers["X-SplitASR-Replica"]] += 1
    return hits


def test_requests_for_one_adapter_stay_on_one_replica(cluster, adapters):
    first = cluster.transcribe("a")
    assert first.status_code == 200, first.text
    time.sleep(1.0)  # the replica reports the adapter it loaded; routers learn it within ~0.1-0.5 s
    hits_a = replicas_hit(cluster, "a", 20)
    replica_a, count = hits_a.most_common(1)[0]
    assert count >= 18, f"adapter a spread over replicas: {hits_a}"
    cluster.transcribe("b")
    time.sleep(1.0)
    hits_b = replicas_hit(cluster, "b", 20)
    replica_b, count = hits_b.most_common(1)[0]
    assert count >= 18, f"adapter b spread over replicas: {hits_b}"
    assert replica_b != replica_a, "b should go to the replica that holds no adapter"
    print(f"affinity after the first request: a {dict(hits_a)}, b {dict(hits_b)}")
    assert not any(tag.startswith("ingress:") for tag in [*hits_a, *hits_b])


def test_every_response_names_a_replica_or_the_ingress(cluster):
    r = httpx.get(f"{cluster.url}/v1/models", headers=cluster.headers(), timeout=30)
    assert r.status_code == 200
    assert r.headers["X-SplitASR-Replica"].startswith("ingress:")
    r = cluster.transcribe("tiny.en")
    assert r.status_code == 200 and not r.headers["X-SplitASR-Replica"].startswith("ingress:")


def test_grpc_on_the_ingress_routes_by_adapter_and_names_the_replica(cluster, adapters):
    import grpc

    from splitasr_device._proto import recognizer_pb2 as pb
    from splitasr_device._proto import recognizer_pb2_grpc

    rest = cluster.transcribe("a")
    assert rest.status_code == 200, rest.text
    with grpc.insecure_channel(cluster.grpc_address) as channel:
        stub = recognizer_pb2_grpc.RecognizerStub(channel)
        request = pb.RecognizeRequest(config=pb.RecognitionConfig(adapter=pb.AdapterRef(name="a")), audio=cluster.audio)
        metadata = (("authorization", f"Bearer {TOKENS['alice']}"),)
        replicas = collections.Counter()
        for _ in range(5):
            reply, call = stub.Recognize.with_call(request, metadata=metadata, timeout=300)
            assert reply.text == rest.json()["text"]
            replicas[dict(call.trailing_metadata())["x-splitasr-replica"]] += 1
        assert replicas.most_common(1)[0][1] >= 4 and not any(r.startswith("ingress:") for r in replicas)
        with pytest.raises(grpc.RpcError) as missing:
            stub.Recognize(pb.RecognizeRequest(config=pb.RecognitionConfig(adapter=pb.AdapterRef(name="a")),
                                               audio=cluster.audio),
                           metadata=(("authorization", f"Bearer {TOKENS['bob']}"),), timeout=60)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND  # bob has no adapter a (yet)


def test_an_upload_through_the_ingress_is_seen_by_every_replica(cluster):
    sha = cluster.upload("fresh", adapter_bytes(cluster.spec, "lora", 40))
    assert {answer[1] for answer in on_every_replica("lookup", "alice", "fresh").values()} == {sha}
    r = httpx.delete(f"{cluster.url}/v1/adapters/fresh", headers=cluster.headers(), timeout=30)
    assert r.status_code == 200, r.text
    assert {answer[1] for answer in on_every_replica("lookup", "alice", "fresh").values()} == {None}
    assert cluster.transcribe("fresh").status_code == 404


def test_two_tenants_are_isolated(cluster, adapters):
    assert cluster.transcribe("a", tenant="bob").status_code == 404  # alice's name means nothing to bob
    models = httpx.get(f"{cluster.url}/v1/models", headers=cluster.headers("bob"), timeout=30).json()
    assert "a" not in {m["id"] for m in models["data"]}
    bobs = cluster.upload("a", adapter_bytes(cluster.spec, "lora", 99), tenant="bob")
    assert bobs != adapters["a"]
    assert cluster.transcribe("a", tenant="bob").status_code == 200
    assert httpx.get(f"{cluster.url}/v1/adapters/a", headers=cluster.headers(), timeout=30).json()["sha256"] == \
        adapters["a"]
    assert httpx.delete(f"{cluster.url}/v1/adapters/a", headers=cluster.headers("bob"), timeout=30).status_code == 200
    assert cluster.transcribe("a").status_code == 200  # bob's delete left alice's adapter alone


def test_one_slot_per_replica_and_three_adapters_alternating(cluster, adapters):
    texts = collections.defaultdict(set)
    for _ in range(3):
        for name in ("a", "b", "c"):
            r = cluster.transcribe(name)
            assert r.status_code == 200, r.text
            texts[name].add(r.json()["text"])
    assert all(len(seen) == 1 for seen in texts.values()), f"an adapter decoded differently after eviction: {texts}"
    infos = on_every_replica("info")
    assert all(len(info["staged_adapters"]) <= 1 for info in infos.values())
    assert sum(info["pool"]["evictions"] for info in infos.values()) >= 1, infos


def test_replicas_export_their_staged_adapters_in_vllms_shape(cluster, adapters):
    r = cluster.transcribe("c")
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 120  # Ray's metrics agent exports every few seconds
    while True:
        text = httpx.get(cluster.metrics_url, timeout=10).text
        series = [line for line in text.splitlines() if line.startswith("ray_splitasr_lora_requests_info{")]
        current = [line for line in series if r.headers["X-SplitASR-Replica"] in line]
        if any(f'running_lora_adapters="{adapters["c"]}"' in line for line in current):
            break
        assert time.monotonic() < deadline, series[:6]
        time.sleep(2.0)
    assert all('max_lora="1"' in line and 'deployment="SplitASRReplica"' in line for line in series)


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape(cluster: Cluster, prefix: str = "ray_splitasr_replica_") -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample of Ray's metrics export whose name starts with ``prefix``."""
    samples = []
    for line in httpx.get(cluster.metrics_url, timeout=10).text.splitlines():
        match = _SAMPLE.match(line)
        if match and match[1].startswith(prefix):
            samples.append((match[1], dict(_LABEL.findall(match[2] or "")), float(match[3])))
    return samples


def per_replica(samples, name: str, **labels: str) -> dict[str, float]:
    """replica id -> the value of metric ``name`` (a counter's ``_total`` suffix optional)."""
    out: dict[str, float] = {}
    for sample, tags, value in samples:
        if sample.removesuffix("_total") == name and all(tags.get(k) == v for k, v in labels.items()):
            assert tags["deployment"] == "SplitASRReplica" and tags["application"] == APP, tags
            out[tags["replica"]] = out.get(tags["replica"], 0.0) + value
    return out


def test_replicas_export_adapter_hits_misses_queue_and_rows_as_ray_metrics(cluster, adapters):
    """A burst for one adapter on one replica: Ray's export shows that replica's requests in progress
    while it runs, then every replica's hits / misses / evictions equal its own pool's counts, and its
    forward passes held more than one row."""
    busy: collections.Counter = collections.Counter()  # replica -> most requests in progress seen at once
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            samples = scrape(cluster)
            now = collections.Counter(per_replica(samples, "ray_splitasr_replica_decoding_requests"))
            now.update(per_replica(samples, "ray_splitasr_replica_queued_requests"))
            for replica, value in now.items():
                busy[replica] = max(busy[replica], value)
            time.sleep(0.2)

    warm = cluster.transcribe("b")  # b is staged on one replica: the burst follows it there
    assert warm.status_code == 200, warm.text
    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.monotonic()
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:  # alice's share of a replica's queue: 4
            burst = list(pool.map(lambda _: cluster.transcribe("b"), range(4)))
            while time.monotonic() < started + 3:  # a scrape or two after the burst too
                time.sleep(0.2)
    finally:
        stop.set()
        watcher.join(60)
    assert all(r.status_code == 200 for r in burst), [r.text for r in burst if r.status_code != 200]
    served = collections.Counter(r.headers["X-SplitASR-Replica"] for r in burst).most_common(1)[0][0]
    assert busy[served] >= 2, f"the replica that served the burst never showed two requests at once: {dict(busy)}"

    deadline = time.monotonic() + 120  # the counters reach the export within a report interval or two
    while True:
        infos = on_every_replica("info")
        samples = scrape(cluster)
        exported = {event: per_replica(samples, f"ray_splitasr_replica_adapter_{event}")
                    for event in ("hits", "misses", "evictions")}
        expected = {event: {tag: float(info["pool"][event]) for tag, info in infos.items()}
                    for event in ("hits", "misses", "evictions")}
        steps = per_replica(samples, "ray_splitasr_replica_batch_rows_count")  # one observation per step
        if all(exported[e].get(tag, 0.0) == n for e in expected for tag, n in expected[e].items()) and \
                steps.get(served) == infos[served]["worker"]["steps"]:
            break
        assert time.monotonic() < deadline, (exported, expected, steps, infos[served]["worker"])
        time.sleep(1.0)
    assert expected["misses"][served] >= 1 and expected["hits"][served] >= 4, expected  # b loaded once, then hit
    single = per_replica(samples, "ray_splitasr_replica_batch_rows_bucket", le="1.0") or \
        per_replica(samples, "ray_splitasr_replica_batch_rows_bucket", le="1")
    assert single[served] < steps[served], "no forward pass on the burst's replica held two rows"
    print(f"busy per replica {dict(busy)}; exported {exported}; steps {steps}, single-row steps {single}")


def test_a_mixed_burst_shares_one_forward_pass_on_a_replica(cluster, adapters):
    """Four tenants' requests, each with its own adapter, sent at once to one replica (an application
    of one replica with 4 slots, beside the main one): they decode in the same forward passes, and each
    gives the text it gives alone."""
    from ray import serve

    from splitasr.audio import decode_audio
    from splitasr.decoding import DecodingOptions
    from splitasr.engine.worker import PRIORITY_FILE
    from splitasr.scale.replica import Replica

    bobs = cluster.upload("mixed", adapter_bytes(cluster.spec, "lora", 77), tenant="bob")
    plan = {"t1": adapters["a"], "t2": adapters["b"], "t3": adapters["c"], "t4": bobs}
    fields = cluster.settings.model_copy(update={"adapter_slots": 4, "grpc_port": 0}).model_dump(mode="json")
    handle = serve.run(Replica.options(num_replicas=1, max_ongoing_requests=8, ray_actor_options={"num_cpus": 0.25})
                       .bind(fields), name="mixed", route_prefix=None)
    audio = decode_audio(cluster.audio)

    def call(tenant: str, sha: str):
        return handle.options(multiplexed_model_id=sha).transcribe.remote(audio, DecodingOptions(), sha, None,
                                                                           PRIORITY_FILE, tenant, None)

    try:
        alone = {t: call(t, sha).result(timeout_s=300) for t, sha in plan.items()}  # one at a time: staged
        before = handle.info.remote().result(timeout_s=60)["worker"]
        responses = {t: call(t, sha) for t, sha in plan.items()}  # all four at once
        together = {t: r.result(timeout_s=300) for t, r in responses.items()}
        info = handle.info.remote().result(timeout_s=60)
    finally:
        serve.delete("mixed")
    for tenant in plan:
        result, _ = together[tenant]
        assert not isinstance(result, BaseException), result
        assert result.text == alone[tenant][0].text, tenant
    assert before["max_adapters"] == 1 and before["max_tenants"] == 1, before  # alone, nothing shared
    assert sorted(info["resident_adapters"]) == sorted(plan.values())
    assert info["worker"]["max_adapters"] == 4 and info["worker"]["max_tenants"] == 4, info["worker"]
    assert info["worker"]["max_rows"] >= 4
    print(f"mixed burst on one replica: {info['worker']}")


def test_a_replica_killed_mid_traffic(cluster, adapters):
    """In-flight decodes are retried on the survivor (or answered 503 + Retry-After); later requests
    for the dead replica's adapter land on the survivor, which loads it from the shared store."""
    import ray
    from ray import serve

    first = cluster.transcribe("a")
    assert first.status_code == 200, first.text
    victim = first.headers["X-SplitASR-Replica"]
    results: list[httpx.Response] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            results.append(cluster.transcribe("a"))

    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(2.0)  # requests in flight on the victim
    ray.kill(ray.get_actor(f"SERVE_REPLICA::{APP}#SplitASRReplica#{victim}", namespace="serve"), no_restart=True)
    killed_at = len(results)
    time.sleep(8.0)
    stop.set()
    for t in threads:
        t.join(300)
    assert all(r.status_code == 200 or (r.status_code == 503 and "Retry-After" in r.headers) for r in results), \
        [(r.status_code, r.text[:200]) for r in results if r.status_code != 200]
    after = [r for r in results[killed_at:] if r.status_code == 200]
    assert after and all(r.headers["X-SplitASR-Replica"] != victim for r in after[-3:])
    assert {r.json()["text"] for r in after} == {first.json()["text"]}  # the same adapter, loaded again
    assert cluster.transcribe("a").status_code == 200
    deadline = time.monotonic() + 300  # Serve replaces the dead replica; leave the cluster whole
    while serve.status().applications[APP].deployments["SplitASRReplica"].status != "HEALTHY" \
            or len(on_every_replica_tags()) < REPLICAS:
        assert time.monotonic() < deadline, "the dead replica was not replaced"
        time.sleep(1.0)


def on_every_replica_tags() -> set[str]:
    handle = replica_handle()
    return {handle.info.remote().result(timeout_s=60)["replica"] for _ in range(10)}
