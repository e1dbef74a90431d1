"""The gRPC server: our three services, standard health checking and reflection, one interceptor.

Runs on ``grpc.aio`` in the same event loop as the REST server (``splitasr serve``) and over the
same :class:`~splitasr.engine.engine.Engine`. Health reports NOT_SERVING until the backbone is
loaded and warmed up, then SERVING.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from splitasr_device._proto import (
    adapters_pb2,
    adapters_pb2_grpc,
    recognizer_pb2,
    recognizer_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)

from ...config import Settings
from ...engine.engine import Engine
from ...jobs import JobManager
from ...tenants import ApiKeys
from .adapters import AdaptersServicer
from .interceptors import ApiInterceptor
from .recognizer import RecognizerServicer
from .trainer import TrainerServicer

log = logging.getLogger(__name__)

SERVICES = (
    recognizer_pb2.DESCRIPTOR.services_by_name["Recognizer"].full_name,
    adapters_pb2.DESCRIPTOR.services_by_name["Adapters"].full_name,
    trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].full_name,
)
_READY_POLL_S = 0.2


@dataclass
class GrpcServer:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    recognizer: RecognizerServicer
    jobs: JobManager
    owns_jobs: bool = False  # created here (not shared with the REST app): closed on stop
    _watcher: asyncio.Task | None = None

    async def start(self, engine: Engine) -> None:
        if not engine.ready:
            for service in ("", *SERVICES):
                await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.owns_jobs:
            await asyncio.to_thread(self.jobs.start)
        await self.server.start()
        self._watcher = asyncio.create_task(self._report_ready(engine))

    async def _report_ready(self, engine: Engine) -> None:
        while not engine.ready:
            await asyncio.sleep(_READY_POLL_S)
        for service in ("", *SERVICES):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float | None) -> None:
        """Report NOT_SERVING, refuse new calls, give calls in progress ``grace`` seconds."""
        log.info("gRPC: stopping; calls in progress get %s s", grace)
        if self._watcher:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        if self.owns_jobs:
            await asyncio.to_thread(self.jobs.close)


def _credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if settings.grpc_tls_cert is None:
        return None
    return grpc.ssl_server_credentials([(settings.grpc_tls_key.read_bytes(), settings.grpc_tls_cert.read_bytes())])


def keepalive_options(settings: Settings) -> list[tuple[str, int]]:
    """Accept the keepalive pings devices send (the device client pings every 20 s, also between
    calls, so a mobile NAT keeps its mapping): gRPC's default server policy takes a ping more often
    than every 5 minutes without data for abuse and closes the connection (GOAWAY too_many_pings)."""
    return [("grpc.http2.min_ping_interval_without_data_ms", settings.grpc_min_ping_interval_ms),
            ("grpc.http2.max_ping_strikes", 2),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.keepalive_time_ms", settings.grpc_keepalive_ms),
            ("grpc.keepalive_timeout_ms", 20_000)]


def create_grpc_server(settings: Settings, engine: Engine, api_keys: ApiKeys | None = None,
                       port: int | None = None, jobs: JobManager | None = None,
                       interceptors: Sequence[grpc.aio.ServerInterceptor] = ()) -> GrpcServer:
    """Build (not start) the server on ``settings.host``:``port`` (default ``settings.grpc_port``;
    0 picks a free port). Call from inside the event loop that will run it. ``jobs``: the REST app's
    training job manager, shared (default: one of its own). ``interceptors``: more, inside the
    authentication and error mapping."""
    api_keys = api_keys or ApiKeys.load(settings.api_keys_file, settings.api_keys)
    limit = settings.grpc_max_message_bytes
    server = grpc.aio.server(
        interceptors=[ApiInterceptor(api_keys, engine.rate_limiter, engine.auth_limiter), *interceptors],
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
                 ("grpc.so_reuseport", 0), *keepalive_options(settings)],
    )
    recognizer = RecognizerServicer(engine, settings)
    recognizer_pb2_grpc.add_RecognizerServicer_to_server(recognizer, server)
    adapters_pb2_grpc.add_AdaptersServicer_to_server(AdaptersServicer(engine, engine.store), server)
    owns_jobs = jobs is None
    jobs = jobs or JobManager(settings, engine)
    trainer_pb2_grpc.add_TrainerServicer_to_server(TrainerServicer(jobs, settings), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{settings.host}:{settings.grpc_port if port is None else port}"
    credentials = _credentials(settings)
    bound = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    log.info("gRPC API on %s%s", address.rsplit(":", 1)[0] + f":{bound}", " (TLS)" if credentials else "")
    return GrpcServer(server, bound, health_servicer, recognizer, jobs, owns_jobs)


class BackgroundGrpc:
    """A gRPC server on its own event loop in a daemon thread (tests, benchmarks, notebooks)."""

    def __init__(self, settings: Settings, engine: Engine, port: int = 0, api_keys: ApiKeys | None = None,
                 jobs: JobManager | None = None):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="grpc-server", daemon=True)
        self._thread.start()

        async def start() -> GrpcServer:
            handle = create_grpc_server(settings, engine, api_keys, port=port, jobs=jobs)
            await handle.start(engine)
            return handle

        self.handle = asyncio.run_coroutine_threadsafe(start(), self.loop).result(60)
        self.address = f"{settings.host}:{self.handle.port}"

    def stop(self, grace: float | None = 1.0) -> None:
        asyncio.run_coroutine_threadsafe(self.handle.stop(grace), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
