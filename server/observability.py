"""What operators watch: Prometheus metrics, structured logs and the request id that ties them together.

Every metric is defined here, in one registry served at ``/metrics``. The engine reports through
small hooks (``observe_batch``, ``observe_pool_event``, ...); the REST middleware calls
``observe_http`` and the gRPC interceptor ``observe_grpc_started`` / ``observe_grpc``. Gauges that
mirror live state (queue depth, slot occupancy) are read from the tracked engines at scrape time, so
they can never drift from the truth.

Labels follow the conventions dashboards expect: HTTP ``method``, ``route`` (the route template,
never a raw path) and ``code`` (the status code); gRPC ``grpc_service``, ``grpc_method``,
``grpc_type`` (unary, client_stream, server_stream, bidi_stream) and ``grpc_code`` (the status code
name), as go-grpc-prometheus and py-grpc-prometheus name them.

The request id lives in a context variable: the REST middleware sets it from ``X-Request-ID`` (or
makes one), gRPC interceptors do the same with ``request_scope(request_id_from_metadata(...))``, and
every log record emitted while serving that request carries it. Logs never contain audio or adapter
bytes: only names, sizes, hashes and timings.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
import time
import uuid
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

from . import __version__

__all__ = [
    "CONTENT_TYPE_LATEST",
    "REGISTRY",
    "REQUEST_ID_HEADER",
    "REQUEST_ID_METADATA_KEY",
    "configure_logging",
    "current_request_id",
    "exposition",
    "new_request_id",
    "observe_audio",
    "observe_auth_failure",
    "observe_backbone_load",
    "observe_batch",
    "observe_grpc",
    "observe_grpc_started",
    "observe_http",
    "observe_pool_event",
    "observe_realtime_session",
    "observe_rescorer_pool_event",
    "observe_train_job",
    "request_id_from_metadata",
    "request_scope",
    "track_engine",
    "track_jobs",
]

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_METADATA_KEY = "x-request-id"  # gRPC metadata keys are lower case
# An incoming id is kept only if it is short and plain, so a client cannot forge log lines with it.
_REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")

# metrics -------------------------------------------------------------------------------------------
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

BUILD_INFO = Info("splitasr_build", "SplitASR version.", registry=REGISTRY)
BUILD_INFO.info({"version": __version__})
HTTP_LABELS = ["method", "route", "code"]
HTTP_REQUESTS = Counter(
    "splitasr_http_requests", "Finished HTTP requests by method, route template and status code.",
    HTTP_LABELS, registry=REGISTRY,
)
HTTP_SECONDS = Histogram(
    "splitasr_http_request_duration_seconds", "HTTP request latency by method, route template and status code.",
    HTTP_LABELS, buckets=_LATENCY_BUCKETS_S, registry=REGISTRY,
)
GRPC_LABELS = ["grpc_service", "grpc_method", "grpc_type"]
GRPC_STARTED = Counter(
    "splitasr_grpc_server_started", "gRPC calls started by service, method and type.", GRPC_LABELS, registry=REGISTRY,
)
GRPC_HANDLED = Counter(
    "splitasr_grpc_server_handled", "Finished gRPC calls by service, method, type and status code.",
    [*GRPC_LABELS, "grpc_code"], registry=REGISTRY,
)
GRPC_SECONDS = Histogram(
    "splitasr_grpc_server_handling_seconds", "gRPC call duration by service, method, type and status code.",
    [*GRPC_LABELS, "grpc_code"], buckets=_LATENCY_BUCKETS_S, registry=REGISTRY,
)
REALTIME_SESSIONS = Counter(
    "splitasr_realtime_sessions", "Finished Realtime API sessions by WebSocket close code.", ["code"],
    registry=REGISTRY,
)
REALTIME_SECONDS = Histogram(
    "splitasr_realtime_session_duration_seconds", "Realtime API session length by WebSocket close code.", ["code"],
    buckets=_LATENCY_BUCKETS_S + (600, 1800, 3600), registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "splitasr_batch_size", "Rows decoded together in one decoder step.", buckets=_BATCH_SIZE_BUCKETS,
    registry=REGISTRY,
)
BATCH_SECONDS = Histogram(
    "splitasr_batch_duration_seconds", "Time of one decoder step.",
    buckets=_LATENCY_BUCKETS_S, registry=REGISTRY,
)
STREAM_FINAL_SECONDS = Histogram(
    "splitasr_stream_final_seconds",
    "Live streams (gRPC and Realtime): from the end of an utterance (endpoint, length limit, commit or "
    "half-close) to its final result.", buckets=_LATENCY_BUCKETS_S, registry=REGISTRY,
)
AUDIO_SECONDS = Counter(
    "splitasr_audio_seconds", "Seconds of audio decoded by the backbone (streams' interim re-decodes included).",
    registry=REGISTRY,
)


class _PoolMetrics:
    """Hits, misses, evictions and load times of one slot pool (the backbone's adapters, the rescorers)."""

    def __init__(self, pool: str, what: str) -> None:
        self.hits = Counter(f"splitasr_{pool}_pool_hits", f"{what} lookups served by a resident slot.",
                            registry=REGISTRY)
        self.misses = Counter(f"splitasr_{pool}_pool_misses", f"{what} lookups that loaded it into a slot.",
                              registry=REGISTRY)
        self.evictions = Counter(f"splitasr_{pool}_pool_evictions",
                                 f"Resident {what.lower()}s evicted (LRU) to free a slot.", registry=REGISTRY)
        self.load_seconds = Histogram(f"splitasr_{pool}_load_duration_seconds",
                                      f"Time to read, validate and load a {what.lower()} into a slot.",
                                      buckets=_LATENCY_BUCKETS_S, registry=REGISTRY)


POOLS = {"adapter": _PoolMetrics("adapter", "Adapter"), "rescorer": _PoolMetrics("rescorer", "Rescorer")}
AUTH_FAILURES = Counter(
    "splitasr_auth_failures", "Requests with a missing or wrong API key, by transport.", ["transport"],
    registry=REGISTRY,
)
AUTH_BLOCKED = Counter(
    "splitasr_auth_blocked", "Requests refused (429) because their client address failed authentication too often.",
    ["transport"], registry=REGISTRY,
)
BACKBONE_LOAD_SECONDS = Gauge(
    "splitasr_backbone_load_seconds", "Time the backbone took to load and warm up.", registry=REGISTRY,
)


TRAIN_JOBS = Counter("splitasr_train_jobs", "Finished training jobs by status (succeeded|failed|cancelled).",
                     ["status"], registry=REGISTRY)
TRAIN_JOB_SECONDS = Histogram("splitasr_train_job_duration_seconds", "Time from start (or queueing) to the end "
                              "of a training job.", buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600),
                              registry=REGISTRY)


class _EngineCollector:
    """Gauges read from the live engines (and job managers) at scrape time (one per process in production)."""

    def __init__(self) -> None:
        self.engines: weakref.WeakSet = weakref.WeakSet()
        self.job_managers: weakref.WeakSet = weakref.WeakSet()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        engines = list(self.engines)
        workers = [e.worker for e in engines if e.worker is not None]
        pools = [e.pool for e in engines if e.pool is not None]
        rescorers = [e.rescoring for e in engines if getattr(e, "rescoring", None) is not None]
        yield _gauge("splitasr_ready", "1 when the backbone is loaded and warmed up.",
                     float(bool(engines) and all(e.ready for e in engines)))
        yield _gauge("splitasr_queue_depth", "Requests queued or being decoded.",
                     sum(w.pending for w in workers))
        yield _gauge("splitasr_queue_capacity", "Requests queued or being decoded before 429.",
                     sum(w.max_queue for w in workers))
        yield _gauge("splitasr_streams_active", "Live streams open (gRPC StreamingRecognize and Realtime sessions).",
                     sum(e.streams.active for e in engines))
        yield _gauge("splitasr_batch_rows", "Rows in the running batch (greedy decodes, beams, samples).",
                     sum(w.live_rows for w in workers))
        yield _gauge("splitasr_adapter_pool_occupancy", "Adapter slots in use.", sum(p.occupancy for p in pools))
        yield _gauge("splitasr_adapter_pool_capacity", "Adapter slots in all.", sum(p.capacity for p in pools))
        yield _gauge("splitasr_rescorer_pool_occupancy", "Rescorer slots in use.",
                     sum(r.occupancy for r in rescorers))
        yield _gauge("splitasr_rescorer_pool_capacity", "Rescorer slots in all.", sum(r.capacity for r in rescorers))
        counts = [m.counts() for m in list(self.job_managers)]
        yield _gauge("splitasr_train_jobs_queued", "Training jobs waiting for a worker.",
                     sum(c["queued"] for c in counts))
        yield _gauge("splitasr_train_jobs_running", "Training jobs running.", sum(c["running"] for c in counts))


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


_ENGINES = _EngineCollector()
REGISTRY.register(_ENGINES)


def track_engine(engine: Any) -> None:
    """Report ``engine``'s readiness, queue and slot pool in the scrape-time gauges."""
    _ENGINES.engines.add(engine)


def observe_stream_final(seconds: float) -> None:
    """A live stream's final result, ``seconds`` after its utterance ended."""
    STREAM_FINAL_SECONDS.observe(seconds)


def observe_http(method: str, route: str, code: int, seconds: float) -> None:
    """Count one finished HTTP request. ``route``: the route template, never a raw path."""
    HTTP_REQUESTS.labels(method, route, str(code)).inc()
    HTTP_SECONDS.labels(method, route, str(code)).observe(seconds)


def grpc_labels(full_method: str, grpc_type: str) -> tuple[str, str, str]:
    """``/splitasr.v1.Recognizer/Recognize`` -> ("splitasr.v1.Recognizer", "Recognize", grpc_type)."""
    service, _, method = full_method.lstrip("/").partition("/")
    return service, method, grpc_type


def observe_grpc_started(full_method: str, grpc_type: str) -> None:
    GRPC_STARTED.labels(*grpc_labels(full_method, grpc_type)).inc()


def observe_grpc(full_method: str, grpc_type: str, code: str, seconds: float) -> None:
    """Count one finished gRPC call; ``code``: the status code name (OK, INVALID_ARGUMENT, ...)."""
    labels = (*grpc_labels(full_method, grpc_type), code)
    GRPC_HANDLED.labels(*labels).inc()
    GRPC_SECONDS.labels(*labels).observe(seconds)


def track_jobs(manager: Any) -> None:
    """Report a training job manager's queued and running jobs in the scrape-time gauges."""
    _ENGINES.job_managers.add(manager)


def observe_train_job(status: str, seconds: float) -> None:
    TRAIN_JOBS.labels(status).inc()
    TRAIN_JOB_SECONDS.observe(max(0.0, seconds))


def observe_realtime_session(close_code: str | int, seconds: float) -> None:
    """Count one finished Realtime session by its WebSocket close code (or ``other``)."""
    REALTIME_SESSIONS.labels(str(close_code)).inc()
    REALTIME_SECONDS.labels(str(close_code)).observe(seconds)


def observe_batch(size: int, seconds: float) -> None:
    """``DecodeWorker(on_step=...)`` hook: rows in one decoder step and its duration."""
    BATCH_SIZE.observe(size)
    BATCH_SECONDS.observe(seconds)


def observe_pool_event(event: str, seconds: float, pool: Literal["adapter", "rescorer"] = "adapter") -> None:
    """``SlotPool.on_event`` hook: "hit", "miss" (with the load time) or "eviction"."""
    metrics = POOLS[pool]
    if event == "hit":
        metrics.hits.inc()
    elif event == "miss":
        metrics.misses.inc()
        metrics.load_seconds.observe(seconds)
    elif event == "eviction":
        metrics.evictions.inc()


def observe_rescorer_pool_event(event: str, seconds: float) -> None:
    """The rescorers' ``SlotPool.on_event`` hook."""
    observe_pool_event(event, seconds, "rescorer")


def observe_auth_failure(transport: str, *, blocked: bool) -> None:
    """A failed authentication (``blocked=False``) or a request refused from a blocked address."""
    (AUTH_BLOCKED if blocked else AUTH_FAILURES).labels(transport).inc()


def observe_backbone_load(seconds: float) -> None:
    BACKBONE_LOAD_SECONDS.set(seconds)


def observe_audio(seconds: float) -> None:
    AUDIO_SECONDS.inc(seconds)


def exposition() -> bytes:
    """The registry in Prometheus' text format (serve with ``CONTENT_TYPE_LATEST``)."""
    return generate_latest(REGISTRY)


# request ids ---------------------------------------------------------------------------------------
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("splitasr_request_id", default=None)


def current_request_id() -> str | None:
    return _request_id.get()


def new_request_id(incoming: str | bytes | None = None) -> str:
    """``incoming`` when it is a plain, short id (what a client or proxy sent); else a fresh one."""
    if isinstance(incoming, bytes):
        incoming = incoming.decode("latin-1")
    if incoming and _REQUEST_ID_PATTERN.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


@contextmanager
def request_scope(incoming: str | bytes | None = None) -> Iterator[str]:
    """Make ``incoming`` (sanitised) or a fresh id the current request id while the block runs.

    gRPC: ``with request_scope(request_id_from_metadata(context.invocation_metadata())) as rid:``
    then send ``rid`` back as ``x-request-id`` metadata.
    """
    request_id = new_request_id(incoming)
    token = _request_id.set(request_id)
    try:
        yield request_id
    finally:
        _request_id.reset(token)


def request_id_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The ``x-request-id`` value of gRPC invocation metadata, if any."""
    for key, value in metadata or ():
        if key.lower() == REQUEST_ID_METADATA_KEY:
            return value.decode("latin-1") if isinstance(value, bytes) else value
    return None


# logging -------------------------------------------------------------------------------------------
# LogRecord attributes that are not ``extra=`` fields
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "request_id", "color_message",  # uvicorn adds an ANSI-coloured copy of the message
}


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, request_id, extra fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if getattr(record, "request_id", None):
            entry["request_id"] = record.request_id
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class _TextFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        rid = getattr(record, "request_id", None)
        return f"{text} [request {rid}]" if rid else text


def configure_logging(level: str = "info", fmt: Literal["auto", "json", "text"] = "auto") -> None:
    """Send every log record (ours, uvicorn's, grpc's) to stderr, as JSON lines or readable text.

    ``auto``: text on a terminal, JSON otherwise (containers, log shippers).
    """
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
        _disable_progress_bars()  # a progress bar on stderr is not a JSON line
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def _disable_progress_bars() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when transformers is imported
    transformers = sys.modules.get("transformers")
    if transformers is not None:
        transformers.utils.logging.disable_progress_bar()
