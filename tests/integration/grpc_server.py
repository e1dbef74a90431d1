"""A real gRPC server on loopback (grpc.aio in its own thread and event loop) over its own engine and
tiny.en backbone, with two tenants. Imported by conftest.py as the session fixture ``grpc_server``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from splitasr.api.rpc.server import BackgroundGrpc
from splitasr.backbones.whisper import WhisperBackbone
from splitasr.config import Settings
from splitasr.engine.engine import Engine

TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789ab"}


@dataclass
class RunningGrpc:
    address: str
    engine: Engine
    settings: Settings
    server: BackgroundGrpc

    def metadata(self, tenant: str = "alice") -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {TOKENS[tenant]}"),)


@pytest.fixture(scope="session")
def grpc_server(backbone_cache_dir, tmp_path_factory) -> Iterator[RunningGrpc]:
    # its own backbone: the engine's slot pool owns the adapter bank of the model it serves
    backbone = WhisperBackbone.load("tiny.en", cache_dir=backbone_cache_dir, device="cpu")
    settings = Settings(host="127.0.0.1", cache_dir=tmp_path_factory.mktemp("grpc"), _env_file=None,
                        api_keys=",".join(f"{t}:{n}" for n, t in TOKENS.items()), max_queued_requests=64,
                        max_streams=40, stream_max_chunk_bytes=64 * 1024, max_adapter_bytes=8 * 1024 * 1024,
                        grpc_max_message_bytes=4 * 1024 * 1024)
    engine = Engine(settings, backbone=backbone)
    engine.load()
    server = BackgroundGrpc(settings, engine)
    yield RunningGrpc(server.address, engine, settings, server)
    server.stop()
    engine.close(10)
