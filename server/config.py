"""One settings object per process, read from ``SPLITASR_*`` environment variables (and an env file
only when one is named: ``Settings(_env_file=path)``, ``splitasr serve --env-file``).

Every field has a default and a description; the README's configuration table and ``.env.example``
list every one (tests/unit/test_deploy.py checks). Invalid values fail at start-up with the setting's
name (``describe_invalid_settings``); an empty variable means the default.
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "SPLITASR_"


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "splitasr"


class Settings(BaseSettings):
    # An empty variable means "the default": docker-compose passes every setting as ${VAR:-}.
    # No .env is read unless named (`splitasr serve --env-file FILE`): the compose `.env` next to the
    # code belongs to docker compose, and picking it up silently would change a local server's keys.
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=None, extra="ignore", env_ignore_empty=True
    )

    backbone: str = Field("tiny.en", description="Backbone: tiny.en, base, a local directory or a hub id.")
    device: str = Field("auto", description="Torch device: auto, cpu, cuda, cuda:1 ...")
    quantize: Literal["none", "int8", "nf4"] = Field(
        "none", description="Backbone weight quantization: none, int8 or nf4 (adapters load on any of them).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Backbone weights' dtype: auto = float16 on CUDA, float32 on the CPU; bfloat16 is "
                            "~1.7x faster on CPUs with AMX or AVX-512 BF16, at the same WER here.")
    cache_dir: Path = Field(default_factory=_default_cache_dir, description="Converted backbones and caches.")
    host: str = Field("127.0.0.1", description="REST bind address.")
    port: int = Field(8000, ge=0, le=65535, description="REST port.")
    max_upload_bytes: int = Field(25 * 1024 * 1024, ge=1024, description="Largest accepted audio upload (413 above).")
    max_audio_seconds: float = Field(3 * 3600.0, gt=0, description="Longest accepted audio (400 above).")
    max_queued_requests: int = Field(64, ge=1, description="Requests in progress or queued before 429.")
    max_queued_requests_per_tenant: int | None = Field(
        None, ge=1, description="Requests one tenant may have in progress or queued (default: half the server's).")
    max_batch_rows: int = Field(
        32, ge=1, le=1024, description="Rows (greedy decodes, beams, samples) in the running batch at once.")
    max_batch_rows_per_tenant: int | None = Field(
        None, ge=1, le=1024, description="Rows one tenant's requests may hold in the running batch (default: "
                                         "three quarters of them when tenants have keys, all of them when open).")
    cuda_graphs: bool = Field(
        True, description="On CUDA, replay decoder steps without adapter rows from CUDA graphs.")
    max_admissions_per_step: int = Field(
        4, ge=1, le=256, description="New windows (encoder passes) admitted into the running batch per step.")
    default_beam_size: int = Field(1, ge=1, le=16, description="Beam size when a request does not choose.")
    audio_ctx_seconds: float | None = Field(
        None, ge=1, le=30, description="Encoder window for clips shorter than this (default: the whole 30 s).")
    fallback_speech_check: bool = Field(
        True, description="Before a window that failed its first decode is decoded again hotter, check it for speech "
                          "(Silero VAD); without speech it stays empty.")
    decode_time_limit_rtf: float = Field(
        1.0, ge=0, description="Seconds of the decode loop's time (its share of each step, by rows) a request may "
                               "use per second of its audio (at least DECODE_TIME_LIMIT_MIN_S), else 504 / "
                               "DEADLINE_EXCEEDED; 0 = no limit.")
    decode_time_limit_min_s: float = Field(
        120.0, gt=0, description="The decode time limit of short audio.")
    vad_filter: bool = Field(
        False, description="Drop long silences from files before decoding (Silero VAD) when a request does not choose.")
    vad_min_silence_ms: int = Field(
        2000, ge=100, le=60000, description="VAD filter: shortest silence that is dropped (shorter pauses stay).")
    store_dir: Path | None = Field(None, description="Adapter store (default: CACHE_DIR/adapters).")
    adapter_store_url: str | None = Field(
        None, description="s3://bucket/prefix: keep adapters in S3 (shared by replicas on many hosts); none = STORE_DIR.")
    adapter_store_endpoint_url: str | None = Field(
        None, description="Endpoint of an S3-compatible server (MinIO, Ceph ...) for ADAPTER_STORE_URL; none = AWS S3.")
    store_sweep_interval_s: float = Field(
        3600.0, ge=0, description="Remove blobs no name points at and temp files this often (also at start); 0 = at start only.")
    api_keys_file: Path | None = Field(None, description="File of 'TOKEN TENANT' lines; none = one open tenant.")
    api_keys: str | None = Field(None, description="Inline keys 'token:tenant,token2:tenant2' (adds to the file).")
    allow_insecure_open: bool = Field(False, description="Allow a non-loopback bind with no API keys.")
    adapter_slots: int = Field(16, ge=1, le=1024, description="Adapters resident in the backbone at once (LRU).")
    adapter_max_rank: int = Field(16, ge=1, le=256, description="Largest LoRA rank accepted.")
    adapter_max_experts: int = Field(4, ge=1, le=64, description="Largest SAML expert count accepted.")
    adapter_targets: str = Field("all", description="Backbone linears adapters may target (preset or globs).")
    max_adapter_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Largest adapter file accepted.")
    rescorer_slots: int = Field(8, ge=1, le=256, description="Rescorers resident in the text encoder (LRU).")
    rescorer_nbest: int = Field(4, ge=2, le=16, description="Hypotheses a rescorer chooses from per utterance.")
    max_adapters_per_tenant: int = Field(100, ge=1, description="Adapter count quota per tenant.")
    max_adapter_bytes_per_tenant: int = Field(1 << 30, ge=1024, description="Adapter storage quota per tenant.")
    rate_limit_per_minute: float = Field(
        0.0, ge=0, description="Requests per tenant per minute, REST and gRPC together (429 above); 0 = no limit.")
    rate_limit_burst: int = Field(20, ge=1, description="Requests a tenant may send at once before the rate applies.")
    auth_failures_per_minute: int = Field(
        20, ge=0, description="Failed authentications per client address per minute before it is blocked; 0 = off.")
    auth_block_seconds: float = Field(
        60.0, gt=0, description="How long a blocked client address gets 429 (RESOURCE_EXHAUSTED).")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="Log lines: json (one object per line), text, or auto (text on a terminal, else json).")
    shutdown_grace_seconds: float = Field(
        30.0, ge=0, description="On SIGTERM, time given to requests and streams in progress before exit.")
    # gRPC API (served by the same process as REST)
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC port on HOST; 0 = no gRPC server.")
    grpc_tls_cert: Path | None = Field(None, description="PEM certificate chain: serve gRPC over TLS.")
    grpc_tls_key: Path | None = Field(None, description="PEM private key of GRPC_TLS_CERT.")
    grpc_max_message_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="Largest gRPC message accepted.")
    grpc_min_ping_interval_ms: int = Field(
        10_000, ge=100, description="Shortest interval between a client's keepalive pings that the server accepts "
                                    "(faster pingers get GOAWAY too_many_pings).")
    grpc_keepalive_ms: int = Field(
        60_000, ge=1_000, description="The server pings an idle connection this often (dead peers are dropped).")
    max_streams: int = Field(
        64, ge=1, description="Concurrent live streams: gRPC StreamingRecognize calls and Realtime sessions together.")
    max_streams_per_tenant: int = Field(
        32, ge=1, description="Concurrent live streams of one tenant (gRPC and Realtime together).")
    stream_max_chunk_bytes: int = Field(256 * 1024, ge=1024, description="Largest audio chunk in a stream message.")
    stream_interim_interval_ms: float = Field(500.0, ge=50, description="New audio between interim decodes.")
    stream_endpoint_silence_ms: float = Field(500.0, ge=100, description="Silence after speech that ends an utterance.")
    stream_vad: Literal["silero", "energy"] = Field("silero", description="Endpointing VAD: silero or energy.")
    stream_idle_timeout_s: float = Field(
        30.0, gt=0, description="A stream that sends nothing for this long is closed (INVALID_ARGUMENT).")
    http_max_header_bytes: int = Field(
        16 * 1024, ge=1024, le=1 << 20, description="Largest request line + headers of a REST request (431 above).")
    http_header_timeout_s: float = Field(
        10.0, gt=0, description="A REST request's headers must arrive within this long (408 after).")
    http_body_timeout_s: float = Field(
        30.0, gt=0, description="A REST request body's deadline, extended 1 s per 16 KiB received (408 after).")
    trusted_proxies: str | None = Field(
        None, description="Proxy addresses or networks (comma-separated) whose X-Forwarded-For is believed; none = no proxy.")
    cors_origins: str | None = Field(
        None, description="Web origins allowed to call the REST API from a browser (comma-separated, or *); "
                          "none = only pages the server itself serves (/ui/).")
    tls_cert: Path | None = Field(None, description="PEM certificate chain: serve REST over HTTPS.")
    tls_key: Path | None = Field(None, description="PEM private key of TLS_CERT.")
    # training jobs: the server trains a tenant's adapter from uploaded recordings (server/jobs/)
    jobs_dir: Path | None = Field(None, description="Training job records and recordings (default: CACHE_DIR/jobs).")
    train_workers: int = Field(
        1, ge=0, le=16, description="Training jobs run at once, each in its own worker process; 0 = jobs off.")
    train_threads: int = Field(1, ge=1, le=256, description="CPU threads of each training worker process.")
    train_gpu_memory_fraction: float = Field(
        0.25, gt=0, le=1, description="On a GPU: the share of its memory a training worker may use.")
    train_max_queued_jobs: int = Field(16, ge=1, description="Jobs queued or running, all tenants (429 above).")
    train_max_jobs_per_tenant: int = Field(2, ge=1, description="Jobs one tenant may have queued or running (429 above).")
    train_max_upload_bytes: int = Field(
        128 * 1024 * 1024, ge=1024, description="Largest job upload, recordings and manifest (413 above).")
    train_min_utterances: int = Field(10, ge=1, description="Fewest utterances a job accepts (400 below).")
    train_max_utterances: int = Field(500, ge=1, description="Most utterances a job accepts (400 above).")
    train_min_audio_seconds: float = Field(20.0, ge=0, description="Least audio in all a job accepts (400 below).")
    train_max_audio_seconds: float = Field(1800.0, gt=0, description="Most audio in all a job accepts (400 above).")
    train_max_epochs: int = Field(20, ge=1, le=1000, description="Largest `epochs` a job may ask for.")
    train_max_job_seconds: float = Field(
        3600.0, gt=0, description="A job running longer than this is stopped and fails.")
    train_worker_idle_seconds: float = Field(
        300.0, ge=0, description="An idle training worker exits after this long (its memory is freed).")
    train_result_ttl_seconds: float = Field(
        3600.0, gt=0, description="A store=false job's adapter is deleted after this long if never downloaded.")
    # scale-out on Ray Serve (`splitasr serve --replicas N`, splitasr.scale)
    replicas: int = Field(0, ge=0, le=4096, description="Engine replicas on Ray Serve; 0 = this one process, no Ray.")
    replica_cpus: float = Field(1.0, ge=0, description="CPUs Ray reserves for each replica.")
    replica_gpus: float = Field(0.0, ge=0, description="GPUs Ray reserves for each replica (1 = one accelerator each).")
    ingress_cpus: float = Field(0.5, ge=0, description="CPUs Ray reserves for the ingress (REST app).")
    scale_matching_timeout_s: float = Field(
        0.1, ge=0, le=60, description="How long Serve waits for a busy replica that holds the request's adapter "
        "before trying another (which then cold-loads it; a load takes milliseconds).")

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str | None) -> str | None:
        items = [item.strip() for item in (value or "").split(",") if item.strip()]
        for item in items:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network (e.g. 10.0.0.0/8)") from None
        return ",".join(items) or None

    @field_validator("adapter_store_url")
    @classmethod
    def _store_url(cls, value: str | None) -> str | None:
        from urllib.parse import urlparse

        if value:
            parsed = urlparse(value)
            if parsed.scheme != "s3" or not parsed.netloc or parsed.query or parsed.fragment:
                raise ValueError("use s3://bucket/prefix (the prefix is optional)")
        return value or None

    @field_validator("adapter_store_endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("use an http:// or https:// URL")
        return value or None

    @field_validator("cache_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.grpc_tls_cert is None) != (self.grpc_tls_key is None):
            raise ValueError("set both SPLITASR_GRPC_TLS_CERT and SPLITASR_GRPC_TLS_KEY, or neither")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("set both SPLITASR_TLS_CERT and SPLITASR_TLS_KEY, or neither")
        if self.train_min_utterances > self.train_max_utterances:
            raise ValueError("SPLITASR_TRAIN_MIN_UTTERANCES is above SPLITASR_TRAIN_MAX_UTTERANCES")
        if self.train_min_audio_seconds > self.train_max_audio_seconds:
            raise ValueError("SPLITASR_TRAIN_MIN_AUDIO_SECONDS is above SPLITASR_TRAIN_MAX_AUDIO_SECONDS")
        if self.train_max_jobs_per_tenant > self.train_max_queued_jobs:
            raise ValueError("SPLITASR_TRAIN_MAX_JOBS_PER_TENANT is above SPLITASR_TRAIN_MAX_QUEUED_JOBS")
        return self

    @property
    def backbone_cache_dir(self) -> Path:
        return self.cache_dir / "backbones"

    @property
    def adapter_store_dir(self) -> Path:
        return (self.store_dir or self.cache_dir / "adapters").expanduser()

    @property
    def training_jobs_dir(self) -> Path:
        return (self.jobs_dir or self.cache_dir / "jobs").expanduser()


def unknown_settings(environ: Mapping[str, str]) -> list[str]:
    """A warning for each ``SPLITASR_*`` variable that names no setting (a misspelling would otherwise
    be dropped without a word), with the closest real name."""
    known = [ENV_PREFIX + name.upper() for name in Settings.model_fields]
    out = []
    for name in sorted(n for n in environ if n.upper().startswith(ENV_PREFIX) and n.upper() not in known):
        close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.75)
        out.append(f"{name} is not a setting and is ignored" + (f"; did you mean {close[0]}?" if close else ""))
    return out


def describe_invalid_settings(exc: ValidationError) -> str:
    """One line per problem, naming the environment variable: what ``splitasr`` prints before exit 2.

    Values are not echoed: some settings (API keys) are secrets.
    """
    lines = []
    for err in exc.errors():
        message = err["msg"].removeprefix("Value error, ")
        loc = [str(part) for part in err.get("loc", ())]
        lines.append(f"invalid setting {ENV_PREFIX}{loc[0].upper()}: {message}" if loc else f"invalid settings: {message}")
    return "\n".join(lines)
