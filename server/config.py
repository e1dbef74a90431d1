"""One settings object per process, read from ``SPLITASR_*`` environment variables (and ``.env``).

Every field has a default and a description; ``splitasr serve --help`` and the README's configuration
table are generated from the same source. Invalid values fail at start-up with the setting's name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "splitasr"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPLITASR_", env_file=".env", extra="ignore")

    backbone: str = Field("tiny.en", description="Backbone: tiny.en, base, a local directory or a hub id.")
    device: str = Field("auto", description="Torch device: auto, cpu, cuda, cuda:1 ...")
    cache_dir: Path = Field(default_factory=_default_cache_dir, description="Converted backbones and caches.")
    host: str = Field("127.0.0.1", description="REST bind address.")
    port: int = Field(8000, ge=0, le=65535, description="REST port.")
    max_upload_bytes: int = Field(25 * 1024 * 1024, ge=1024, description="Largest accepted audio upload (413 above).")
    max_audio_seconds: float = Field(3 * 3600.0, gt=0, description="Longest accepted audio (400 above).")
    max_queued_requests: int = Field(64, ge=1, description="Requests in progress or queued before 429.")
    max_batch_size: int = Field(8, ge=1, le=256, description="Most utterances decoded in one forward pass.")
    max_batch_wait_ms: float = Field(10.0, ge=0, description="How long a batch waits to fill up.")
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
    max_adapters_per_tenant: int = Field(100, ge=1, description="Adapter count quota per tenant.")
    max_adapter_bytes_per_tenant: int = Field(1 << 30, ge=1024, description="Adapter storage quota per tenant.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")

    @field_validator("cache_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def backbone_cache_dir(self) -> Path:
        return self.cache_dir / "backbones"

    @property
    def adapter_store_dir(self) -> Path:
        return (self.store_dir or self.cache_dir / "adapters").expanduser()
