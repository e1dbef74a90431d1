"""One settings object per process, read from ``SPLITASR_*`` environment variables (and ``.env``).

Every field has a default and a description; the README's configuration table and ``.env.example``
list every one (tests/unit/test_deploy.py checks). Invalid values fail at start-up with the setting's
name (``describe_invalid_settings``); an empty variable means the default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "SPLITASR_"


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "splitasr"


class Settings(BaseSettings):
    # An empty variable means "the default": docker-compose passes every setting as ${VAR:-}.
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", env_ignore_empty=True
    )

    backbone: str = Field("tiny.en", description="Backbone: tiny.en, base, a local directory or a hub id.")
    device: str = Field("auto", description="Torch device: auto, cpu, cuda, cuda:1 ...")
    quantize: Literal["none", "int8", "nf4"] = Field(
        "none", description="Backbone weight quantization: none, int8 or nf4 (adapters load on any of them).")
    cache_dir: Path = Field(default_factory=_default_cache_dir, description="Converted backbones and caches.")
    host: str = Field("127.0.0.1", description="REST bind address.")
    port: int = Field(8000, ge=0, le=65535, description="REST port.")
    max_upload_bytes: int = Field(25 * 1024 * 1024, ge=1024, description="Largest accepted audio upload (413 above).")
    max_audio_seconds: float = Field(3 * 3600.0, gt=0, description="Longest accepted audio (400 above).")
    max_queued_requests: int = Field(64, ge=1, description="Requests in progress or queued before 429.")
    max_batch_rows: int = Field(
        32, ge=1, le=1024, description="Rows (greedy decodes, beams, samples) in the running batch at once.")
    max_admissions_per_step: int = Field(
        4, ge=1, le=256, description="New windows (encoder passes) admitted into the running batch per step.")
    default_beam_size: int = Field(1, ge=1, le=16, description="Beam size when a request does not choose.")
    store_dir: Path | None = Field(None, description="Adapter store (default: CACHE_DIR/adapters).")
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
    max_streams: int = Field(
        64, ge=1, description="Concurrent live streams: gRPC StreamingRecognize calls and Realtime sessions together.")
    stream_max_chunk_bytes: int = Field(256 * 1024, ge=1024, description="Largest audio chunk in a stream message.")
    stream_interim_interval_ms: float = Field(500.0, ge=50, description="New audio between interim decodes.")
    stream_endpoint_silence_ms: float = Field(500.0, ge=100, description="Silence after speech that ends an utterance.")
    stream_vad: Literal["silero", "energy"] = Field("silero", description="Endpointing VAD: silero or energy.")
    stream_idle_timeout_s: float = Field(
        30.0, gt=0, description="A stream that sends nothing for this long is closed (INVALID_ARGUMENT).")
    cors_origins: str | None = Field(
        None, description="Web origins allowed to call the REST API from a browser (comma-separated, or *); "
                          "none = only pages the server itself serves (/ui/).")
    tls_cert: Path | None = Field(None, description="PEM certificate chain: serve REST over HTTPS.")
    tls_key: Path | None = Field(None, description="PEM private key of TLS_CERT.")

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
        return self

    @property
    def backbone_cache_dir(self) -> Path:
        return self.cache_dir / "backbones"

    @property
    def adapter_store_dir(self) -> Path:
        return (self.store_dir or self.cache_dir / "adapters").expanduser()


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
