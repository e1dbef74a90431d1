"""A real SplitASR REST server on loopback (uvicorn in a thread) with the real tiny.en backbone."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn

from splitasr.api.rest.app import create_app
from splitasr.config import Settings
from splitasr.engine.engine import Engine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789ab"}


@dataclass
class RunningServer:
    url: str
    engine: Engine
    settings: Settings
    app: Any = None  # the FastAPI app (its state holds what the routes use)

    def headers(self, tenant: str = "alice") -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKENS[tenant]}"}


def start_server(settings: Settings, engine: Engine, jobs=None) -> tuple[uvicorn.Server, threading.Thread]:
    """uvicorn as `splitasr serve` configures it (protocol limits included), in a thread."""
    from splitasr.api.rest.protocol import uvicorn_config

    config = uvicorn_config(create_app(settings, engine, jobs=jobs), settings, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture(scope="session")
def rest_server(tiny_backbone, cache_root, tmp_path_factory) -> Iterator[RunningServer]:
    settings = Settings(host="127.0.0.1", port=free_port(), cache_dir=cache_root,
                        store_dir=tmp_path_factory.mktemp("store"),
                        max_upload_bytes=2 * 1024 * 1024, max_queued_requests=16, adapter_slots=4,
                        api_keys=",".join(f"{token}:{tenant}" for tenant, token in TOKENS.items()),
                        _env_file=None)
    engine = Engine(settings, backbone=tiny_backbone)
    server, thread = start_server(settings, engine)
    url = f"http://127.0.0.1:{settings.port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    else:
        pytest.fail("server did not become ready")
    yield RunningServer(url, engine, settings, server.config.app)
    server.should_exit = True
    thread.join(30)


from .grpc_server import grpc_server  # noqa: F401 - session fixture shared by the gRPC test modules
from .jobs_server import jobs_server, speaker, trained_job  # noqa: F401 - fixtures of the training job tests
