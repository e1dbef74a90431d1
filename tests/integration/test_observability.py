"""/metrics and request ids on the real REST server: the counters move with real requests."""

from __future__ import annotations

import re

import httpx
from prometheus_client.parser import text_string_to_metric_families

from splitasr import __version__
from tests.adapter_factory import adapter_bytes
from tests.integration.conftest import TOKENS

AUTH = {"Authorization": f"Bearer {TOKENS['alice']}"}
TRANSCRIBE = "/v1/audio/transcriptions"


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics, keyed by (name, sorted labels)."""
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def transcribe(url: str, path, model: str = "tiny.en", headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"{url}{TRANSCRIBE}", files={"file": ("a.flac", path.read_bytes())},
                      data={"model": model}, headers={**AUTH, **(headers or {})}, timeout=120)


def test_metrics_move_with_real_requests(rest_server, real_speech):
    row = next(r for r in real_speech if r["audio_filepath"].endswith("goforward.flac"))
    before = scrape(rest_server.url)
    ok = transcribe(rest_server.url, row["path"])
    assert ok.status_code == 200, ok.text
    missing = transcribe(rest_server.url, row["path"], model="no-such-adapter")
    assert missing.status_code == 404
    after = scrape(rest_server.url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    route = {"method": "POST", "route": TRANSCRIBE}
    assert delta("splitasr_http_requests_total", **route, code="200") == 1
    assert delta("splitasr_http_requests_total", **route, code="404") == 1
    assert delta("splitasr_http_request_duration_seconds_count", **route, code="200") == 1
    assert delta("splitasr_http_request_duration_seconds_sum", **route, code="200") > 0
    assert delta("splitasr_batch_size_count") >= 1
    assert abs(delta("splitasr_audio_seconds_total") - row["duration"]) < 0.1
    assert value(after, "splitasr_backbone_load_seconds") > 0
    assert value(after, "splitasr_ready") == 1
    assert value(after, "splitasr_queue_capacity") >= rest_server.settings.max_queued_requests
    assert value(after, "splitasr_build_info", version=__version__) == 1


def test_adapter_pool_metrics(rest_server, real_speech):
    from splitasr.adapters import BackboneSpec

    backbone = rest_server.engine.backbone
    spec = BackboneSpec.from_model(backbone.name, backbone.model)
    upload = httpx.post(f"{rest_server.url}/v1/adapters", headers=AUTH, timeout=60, data={"name": "metrics-lora"},
                        files={"file": ("a.safetensors", adapter_bytes(spec, "lora", seed=4242))})
    assert upload.status_code == 201, upload.text
    before = scrape(rest_server.url)
    for _ in range(2):  # first use loads it into a slot (miss), the second finds it there (hit)
        assert transcribe(rest_server.url, real_speech[-1]["path"], model="metrics-lora").status_code == 200
    after = scrape(rest_server.url)
    assert value(after, "splitasr_adapter_pool_misses_total") - value(before, "splitasr_adapter_pool_misses_total") == 1
    assert value(after, "splitasr_adapter_pool_hits_total") - value(before, "splitasr_adapter_pool_hits_total") == 1
    assert value(after, "splitasr_adapter_load_duration_seconds_count") > 0
    assert 1 <= value(after, "splitasr_adapter_pool_occupancy") <= value(after, "splitasr_adapter_pool_capacity")
    assert value(after, "splitasr_http_requests_total", method="POST", route="/v1/adapters", code="201") >= 1


def test_request_id_is_returned_and_made_up_when_absent(rest_server):
    given = httpx.get(f"{rest_server.url}/v1/models", headers={**AUTH, "X-Request-ID": "trace-abc.123"})
    assert given.headers["x-request-id"] == "trace-abc.123"
    made = httpx.get(f"{rest_server.url}/v1/models", headers=AUTH)
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    # an id that could forge log lines is replaced, not echoed
    forged = httpx.get(f"{rest_server.url}/healthz", headers={"X-Request-ID": "x\" injected=1"})
    assert re.fullmatch(r"[0-9a-f]{32}", forged.headers["x-request-id"])


def test_unknown_paths_share_one_label(rest_server):
    before = scrape(rest_server.url)
    for path in ("/nope/1", "/nope/2"):
        assert httpx.get(f"{rest_server.url}{path}").status_code == 404
    after = scrape(rest_server.url)
    key = {"method": "GET", "route": "unmatched", "code": "404"}
    assert value(after, "splitasr_http_requests_total", **key) - value(before, "splitasr_http_requests_total", **key) == 2
    assert not any("/nope/" in str(labels) for _, labels in after)


def test_label_names_follow_dashboard_conventions(rest_server, grpc_server, real_speech):
    """HTTP: method, route, code; gRPC: grpc_service, grpc_method, grpc_type, grpc_code; no status label."""
    import grpc

    from splitasr_device._proto import recognizer_pb2 as pb
    from splitasr_device._proto import recognizer_pb2_grpc

    assert transcribe(rest_server.url, real_speech[-1]["path"]).status_code == 200
    with grpc.insecure_channel(grpc_server.address) as channel:
        stub = recognizer_pb2_grpc.RecognizerStub(channel)
        request = pb.RecognizeRequest(config=pb.RecognitionConfig(), audio=real_speech[-1]["path"].read_bytes())
        stub.Recognize(request, metadata=grpc_server.metadata(), timeout=120)
    response = httpx.get(f"{rest_server.url}/metrics", timeout=10)
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    http = {"splitasr_http_requests", "splitasr_http_request_duration_seconds"}
    grpc_families = {"splitasr_grpc_server_handled", "splitasr_grpc_server_handling_seconds"}
    for name in http | grpc_families | {"splitasr_grpc_server_started"}:
        assert families[name].samples, name
    for name in http:
        for sample in families[name].samples:
            assert set(sample.labels) - {"le"} == {"method", "route", "code"}, sample
    for name in grpc_families:
        for sample in families[name].samples:
            assert set(sample.labels) - {"le"} == {"grpc_service", "grpc_method", "grpc_type", "grpc_code"}, sample
    handled = {(s.labels["grpc_service"], s.labels["grpc_method"], s.labels["grpc_type"], s.labels["grpc_code"])
               for s in families["splitasr_grpc_server_handled"].samples}
    assert ("splitasr.v1.Recognizer", "Recognize", "unary", "OK") in handled
    assert "splitasr_requests" not in families  # the old metric mixing transports' status codes
    # a transport or status label only where it is the metric's own dimension: the door a failed key
    # came through (rest, grpc, realtime), a training job's outcome (succeeded, failed, cancelled)
    own = {"splitasr_auth_failures": {"transport"}, "splitasr_auth_blocked": {"transport"},
           "splitasr_train_jobs": {"status"}}
    mixed = [(f.name, s.labels) for f in families.values() for s in f.samples
             if {"status", "transport"} & set(s.labels) - own.get(f.name.removesuffix("_created"), set())]
    assert not mixed, mixed
    for pool in ("adapter", "rescorer"):
        for metric in ("pool_hits", "pool_misses", "pool_evictions", "load_duration_seconds", "pool_occupancy",
                       "pool_capacity"):
            assert f"splitasr_{pool}_{metric}" in families, (pool, metric)
    # summed over the engines this process serves (here the REST and the gRPC test servers)
    assert families["splitasr_rescorer_pool_capacity"].samples[0].value >= rest_server.settings.rescorer_slots
