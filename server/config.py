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
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")

    @field_validator("cache_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def backbone_cache_dir(self) -> Path:
        return self.cache_dir / "backbones"
