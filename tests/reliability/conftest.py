"""Servers for the reliability suite.

``serve_both`` runs one engine (its own tiny.en backbone) behind a real REST server (uvicorn in a
thread) and a real gRPC server (grpc.aio in a thread) on loopback; each test module shares one
(module-scoped fixture) to keep the suite fast. ``spawn`` runs ``splitasr serve`` as operators do, in
a subprocess (optionally inside a network namespace), for faults that need a process to kill.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import pytest

from splitasr_device._proto import adapters_pb2 as apb
from splitasr_device._proto import adapters_pb2_grpc, recognizer_pb2_grpc
from splitasr_device._proto import recognizer_pb2 as pb
from tests.integration.conftest import free_port, start_server

# carol is the bystander: after every class of abuse her ordinary requests must still work
TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789ab", "carol": "carol-token-0123456789",
          "dave": "dave-token-0123456789ab", "erin": "erin-token-0123456789ab"}
API_KEYS = ",".join(f"{token}:{tenant}" for tenant, token in TOKENS.items())
# examples per fuzzing test: a few in the default suite, more with SPLITASR_FUZZ_EXAMPLES=200
FUZZ_EXAMPLES = int(os.environ.get("SPLITASR_FUZZ_EXAMPLES", "8"))
TRACE_MARKERS = ("Traceback", 'File "/', "site-packages", ".py\", line")


@dataclass
class Service:
    url: str
    grpc_address: str
    engine: object
    settings: object
    channel: grpc.Channel
    adapters: adapters_pb2_grpc.AdaptersStub = field(init=False)
    recognizer: recognizer_pb2_grpc.RecognizerStub = field(init=False)
    grpc_handle: object = None

    def __post_init__(self) -> None:
        self.adapters = adapters_pb2_grpc.AdaptersStub(self.channel)
        self.recognizer = recognizer_pb2_grpc.RecognizerStub(self.channel)

    def headers(self, tenant: str = "alice") -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKENS[tenant]}"}

    def metadata(self, tenant: str = "alice") -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {TOKENS[tenant]}"),)


def load_backbone(backbone_cache_dir: Path):
    # each engine needs its own model: the slot pool owns the adapter bank attached to it
    from splitasr.backbones.whisper import WhisperBackbone

    return WhisperBackbone.load("tiny.en", cache_dir=backbone_cache_dir, device="cpu")


@contextlib.contextmanager
def serve_both(backbone_cache_dir: Path, root: Path, **overrides) -> Iterator[Service]:
    from splitasr.api.rpc.server import BackgroundGrpc
    from splitasr.config import Settings
    from splitasr.engine.engine import Engine

    values = {"host": "127.0.0.1", "port": free_port(), "cache_dir": root, "store_dir": root / "store",
              "api_keys": API_KEYS, "max_upload_bytes": 8 * 1024 * 1024, "max_adapter_bytes": 8 * 1024 * 1024,
              "grpc_max_message_bytes": 12 * 1024 * 1024, "max_audio_seconds": 600, "_env_file": None}
    values.update(overrides)
    settings = Settings(**values)
    engine = Engine(settings, backbone=load_backbone(backbone_cache_dir))
    engine.load()
    rest, thread = start_server(settings, engine)
    grpc_server = BackgroundGrpc(settings, engine)
    url = f"http://127.0.0.1:{settings.port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        time.sleep(0.1)
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    channel = grpc.insecure_channel(grpc_server.address, options)
    try:
        yield Service(url, grpc_server.address, engine, settings, channel, grpc_handle=grpc_server)
    finally:
        channel.close()
        grpc_server.stop(0.5)
        rest.should_exit = True
        thread.join(30)
        engine.close(10)


# -- checks shared by the modules -------------------------------------------------------------------

def assert_rest_error(response: httpx.Response, status: int | tuple[int, ...], *words: str) -> str:
    """A clear OpenAI-shaped error: the status, the words in the message, and no stack trace."""
    statuses = (status,) if isinstance(status, int) else status
    assert response.status_code in statuses, response.text[:500]
    message = response.json()["error"]["message"]
    for word in words:
        assert word.lower() in message.lower(), message
    assert not any(m in response.text for m in TRACE_MARKERS), response.text[:500]
    return message


def grpc_error(call) -> grpc.RpcError:
    """The RpcError a call (unary, or a stream that is drained) ends with."""
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if hasattr(result, "__iter__") and not isinstance(result, (bytes, str)):
            for _ in result:
                pass
    return info.value


def assert_grpc_error(call, codes: grpc.StatusCode | tuple[grpc.StatusCode, ...], *words: str) -> str:
    codes = (codes,) if isinstance(codes, grpc.StatusCode) else codes
    error = grpc_error(call)
    details = error.details() or ""
    assert error.code() in codes, (error.code(), details)
    for word in words:
        assert word.lower() in details.lower(), details
    assert not any(m in details for m in TRACE_MARKERS), details
    return details


def assert_serves_others(service: Service, audio: bytes | None = None, tenant: str = "carol") -> None:
    """Ordinary requests of another tenant still work over both transports: listing its adapters and,
    given ``audio``, a transcription (which needs the engine's scheduler and backbone)."""
    assert httpx.get(f"{service.url}/readyz", timeout=10).status_code == 200
    assert httpx.get(f"{service.url}/v1/adapters", headers=service.headers(tenant), timeout=30).status_code == 200
    service.adapters.List(apb.ListAdaptersRequest(), metadata=service.metadata(tenant), timeout=30)
    if audio is None:
        return
    r = httpx.post(f"{service.url}/v1/audio/transcriptions", files={"file": ("a.flac", audio)},
                   data={"model": "tiny.en"}, headers=service.headers(tenant), timeout=120)
    assert r.status_code == 200 and "forward" in r.json()["text"].lower(), r.text
    response = service.recognizer.Recognize(pb.RecognizeRequest(audio=audio), metadata=service.metadata(tenant),
                                            timeout=120)
    assert "forward" in response.text.lower()


@pytest.fixture(scope="session")
def goforward(real_speech) -> bytes:
    """A 2.8 s real utterance, "Go forward ten meters." (FLAC bytes)."""
    return next(r for r in real_speech if r["audio_filepath"].endswith("goforward.flac"))["path"].read_bytes()


# -- `splitasr serve` as a subprocess ---------------------------------------------------------------

@dataclass
class Spawned:
    proc: subprocess.Popen
    host: str
    port: int
    grpc_port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def grpc_address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()


def spawn(cache_root: Path, store: Path, *, port: int | None = None, grpc_port: int | None = None,
          host: str = "127.0.0.1", env: dict[str, str] | None = None, prefix: list[str] | None = None,
          wait_ready: bool = True, scheme: str = "http", verify: object = True, timeout: float = 180) -> Spawned:
    """Start ``splitasr serve`` (``prefix``: e.g. ``ip netns exec NS``) and wait until /readyz says ready."""
    port = port or free_port()
    grpc_port = grpc_port or free_port()
    full_env = {**os.environ, "SPLITASR_CACHE_DIR": str(cache_root), "SPLITASR_STORE_DIR": str(store),
                "SPLITASR_API_KEYS": API_KEYS, "SPLITASR_HOST": host, "SPLITASR_PORT": str(port),
                "SPLITASR_GRPC_PORT": str(grpc_port), "SPLITASR_LOG_FORMAT": "json",
                "SPLITASR_SHUTDOWN_GRACE_SECONDS": "2", "OMP_NUM_THREADS": "1", **(env or {})}
    store.parent.mkdir(parents=True, exist_ok=True)
    log = store.parent / f"server-{port}.log"  # a file, not a pipe: a full pipe would stall the server
    with open(log, "ab") as sink:
        proc = subprocess.Popen([*(prefix or []), sys.executable, "-m", "splitasr.cli", "serve"], env=full_env,
                                stdout=subprocess.DEVNULL, stderr=sink, cwd=store.parent)
    spawned = Spawned(proc, host, port, grpc_port, log)
    if not wait_ready:
        return spawned
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited: {log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{scheme}://{host}:{port}/readyz", timeout=2, verify=verify).status_code == 200:
                return spawned
        time.sleep(0.3)
    spawned.kill()
    pytest.fail(f"server did not become ready: {log.read_text()[-3000:]}")
