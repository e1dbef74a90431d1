"""Request ids, JSON log lines and the metric hooks of splitasr.observability (no server)."""

from __future__ import annotations

import json
import logging
import re

from splitasr import observability as obs


def sample(name: str, **labels: str) -> float:
    return obs.REGISTRY.get_sample_value(name, labels or None) or 0.0


def test_request_scope_keeps_a_plain_id_and_replaces_a_suspicious_one():
    assert obs.current_request_id() is None
    with obs.request_scope("client-id_1.2:3") as rid:
        assert rid == "client-id_1.2:3" == obs.current_request_id()
        with obs.request_scope(None) as inner:
            assert re.fullmatch(r"[0-9a-f]{32}", inner)
        assert obs.current_request_id() == rid
    assert obs.current_request_id() is None
    for bad in ("two words", "line\nbreak", "x" * 129, b"\xff\xfe"):
        with obs.request_scope(bad) as rid:
            assert re.fullmatch(r"[0-9a-f]{32}", rid)


def test_request_id_from_grpc_metadata():
    metadata = (("authorization", "Bearer t"), ("X-Request-ID", b"abc"))
    assert obs.request_id_from_metadata(metadata) == "abc"
    assert obs.request_id_from_metadata([("authorization", "Bearer t")]) is None
    assert obs.request_id_from_metadata(None) is None


def test_json_lines_carry_the_request_id_and_extra_fields():
    record = logging.LogRecord("splitasr.x", logging.INFO, __file__, 1, "done %s", ("ok",), None)
    record.status = 200
    record.color_message = "\x1b[1mdone\x1b[0m"
    with obs.request_scope("req-7"):
        obs._RequestIdFilter().filter(record)
    entry = json.loads(obs.JsonFormatter().format(record))
    assert entry["message"] == "done ok" and entry["level"] == "info" and entry["logger"] == "splitasr.x"
    assert entry["request_id"] == "req-7" and entry["status"] == 200
    assert "color_message" not in entry
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["ts"])


def test_hooks_move_their_metrics():
    hits, misses = sample("splitasr_adapter_pool_hits_total"), sample("splitasr_adapter_pool_misses_total")
    evictions, batches = sample("splitasr_adapter_pool_evictions_total"), sample("splitasr_batch_size_count")
    grpc_labels = {"grpc_service": "splitasr.v1.Recognizer", "grpc_method": "Recognize", "grpc_type": "unary"}
    started = sample("splitasr_grpc_server_started_total", **grpc_labels)
    handled = sample("splitasr_grpc_server_handled_total", **grpc_labels, grpc_code="OK")
    http = sample("splitasr_http_requests_total", method="GET", route="/v1/models", code="200")
    rescorer_misses = sample("splitasr_rescorer_pool_misses_total")
    obs.observe_pool_event("hit", 0.0)
    obs.observe_pool_event("miss", 0.02)
    obs.observe_pool_event("eviction", 0.0)
    obs.observe_rescorer_pool_event("miss", 0.01)
    obs.observe_batch(3, 0.5)
    obs.observe_grpc_started("/splitasr.v1.Recognizer/Recognize", "unary")
    obs.observe_grpc("/splitasr.v1.Recognizer/Recognize", "unary", "OK", 0.1)
    obs.observe_http("GET", "/v1/models", 200, 0.01)
    assert sample("splitasr_adapter_pool_hits_total") == hits + 1
    assert sample("splitasr_adapter_pool_misses_total") == misses + 1
    assert sample("splitasr_adapter_pool_evictions_total") == evictions + 1
    assert sample("splitasr_rescorer_pool_misses_total") == rescorer_misses + 1
    assert sample("splitasr_batch_size_count") == batches + 1
    assert sample("splitasr_grpc_server_started_total", **grpc_labels) == started + 1
    assert sample("splitasr_grpc_server_handled_total", **grpc_labels, grpc_code="OK") == handled + 1
    assert sample("splitasr_http_requests_total", method="GET", route="/v1/models", code="200") == http + 1
    assert b"splitasr_queue_depth" in obs.exposition()
