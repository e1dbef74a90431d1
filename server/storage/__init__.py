"""Where adapters live: content-addressed files with per-tenant names, on local disk (:mod:`.store`)
or in an S3 bucket (:mod:`.s3`); :func:`open_store` opens the one the settings name."""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from .store import AdapterRecord, AdapterStore, BaseStore, check_name, check_sha256

__all__ = ["AdapterRecord", "AdapterStore", "BaseStore", "check_name", "check_sha256", "open_store"]


def open_store(root: Path, url: str | None = None, *, endpoint_url: str | None = None,
               max_adapters_per_tenant: int = 100, max_bytes_per_tenant: int = 1 << 30,
               sweep_interval_s: float = 0.0) -> BaseStore:
    """The store the settings name: ``url`` ``s3://bucket/prefix`` (an S3 or S3-compatible server at
    ``endpoint_url``), else the folder ``root``."""
    quotas = {"max_adapters_per_tenant": max_adapters_per_tenant, "max_bytes_per_tenant": max_bytes_per_tenant,
              "sweep_interval_s": sweep_interval_s}
    if url:
        try:
            from .s3 import S3AdapterStore  # needs boto3 (the `s3` extra)
        except ImportError as exc:
            raise UsageError(f"SPLITASR_ADAPTER_STORE_URL={url} needs boto3 ({exc.name} is missing): "
                             "pip install 'splitasr[s3]'") from None

        return S3AdapterStore(url, endpoint_url=endpoint_url, **quotas)
    return AdapterStore(root, **quotas)
