"""A real gRPC server on loopback (grpc.aio in its own thread and event loop) over its own engine and
tiny.en backbone, with two tenants. Imported by conftest.py as the session fixture ``grpc_server``."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from splitasr.api.rpc.server import GrpcServer, create_grpc_server
from splitasr.backbones.whisper import WhisperBackbone
from splitasr.config import Settings
from splitasr.engine.engine import Engine

TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789ab"}


@dataclass
class RunningGrpc:
    address: str
    engine: Engine
    settings: Settings
    handle: GrpcServer
    loop: asyncio.AbstractEventLoop

    def metadata(self, tenant: str = "alice") -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {TOKENS[tenant]}"),)


def start_grpc(settings: Settings, engine: Engine) -> tuple[GrpcServer, asyncio.AbstractEventLoop, threading.Thread]:
    loop = asyncio.new_event_loop()
    started: dict = {}

    async def main() -> None:
        handle = create_grpc_server(settings, engine, port=0)
        await handle.start(engine)
        started["handle"] = handle
        await handle.server.wait_for_termination()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    while "handle" not in started and thread.is_alive():
        threading.Event().wait(0.05)
    return started["handle"], loop, thread


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
    handle, loop, thread = start_grpc(settings, engine)
    yield RunningGrpc(f"127.0.0.1:{handle.port}", engine, settings, handle, loop)
    asyncio.run_coroutine_threadsafe(handle.stop(1.0), loop).result(30)
    thread.join(30)
    engine.close(10)
