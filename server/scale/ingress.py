"""The ingress deployment: the FastAPI app (REST, the web page, the Realtime API, metrics) and the
gRPC API over an engine that sends each decode to a replica chosen by its adapter.

Authentication, adapter uploads and deletes, name resolution, rate limits and stream slots happen
here, on the shared store; the decode itself goes to the replica deployment with
``multiplexed_model_id`` = the adapter's sha256, so Serve routes it to a replica that already holds
that adapter. The ingress keeps a CPU copy of the backbone only to validate uploads and request
options against it; it runs no decode worker.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Hashable, Iterator
from contextvars import ContextVar
from typing import Any

import grpc
import numpy as np
import ray.exceptions
from fastapi import FastAPI
from ray import serve
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..adapters import BackboneSpec, attach_bank
from ..backbones.loader import load_backbone
from ..config import Settings
from ..decoding import DecodingOptions, Transcription
from ..engine.engine import Engine, make_decoder
from ..engine.worker import PRIORITY_FILE
from ..errors import NotReady, Overloaded
from ..tenants import ApiKeys

log = logging.getLogger(__name__)

REPLICA_HEADER = "X-SplitASR-Replica"
_REQUEST_ID = b"x-request-id"
# a replica that died or went away while it held the request: the decode is safe to run again
_REPLICA_LOST = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, DeploymentUnavailableError)
RETRIES_ON_REPLICA_LOSS = 1

_decoded_by: ContextVar[list[str] | None] = ContextVar("splitasr_decoded_by", default=None)


class RoutedEngine(Engine):
    """An :class:`Engine` whose decodes run on the replica deployment; everything else runs here."""

    def __init__(self, settings: Settings, replicas: DeploymentHandle):
        super().__init__(settings)
        self.replicas = replicas
        self._decoder = None

    def load(self) -> None:
        """Load the backbone on the CPU (for validation only: no warm-up, no worker); then accept requests."""
        try:
            backbone = load_backbone(self.settings.backbone, cache_dir=self.settings.backbone_cache_dir,
                                     device="cpu", quantize=self.settings.quantize)
            # one slot: the bank is here only so that the spec lists the targets adapters may use
            attach_bank(backbone.model, self.settings.adapter_targets, 1, self.limits)
            self.spec = BackboneSpec.from_model(backbone.name, backbone.model)
            self._decoder = make_decoder(backbone, 1)
        except Exception as exc:
            self.load_error = str(exc)
            log.error("backbone %r failed to load: %s", self.settings.backbone, exc)
            raise
        self.backbone = backbone
        self._ready.set()

    @property
    def word_timestamps_available(self) -> bool:
        return bool(getattr(getattr(self._decoder, "vocab", None), "alignment_heads", ()))

    async def transcribe_audio(self, audio: np.ndarray, options: DecodingOptions,
                               adapter: str | None = None, rescorer: str | None = None, *,
                               priority: int = PRIORITY_FILE, tenant: str = "",
                               key: Hashable | None = None,
                               listener: Callable[[str], None] | None = None) -> Transcription:
        """Decode on a replica that holds ``adapter`` (Serve's multiplexed routing); a replica lost
        mid-request is retried once on another, then answered with a retryable 503. A replica answers
        with the whole result, so ``listener`` is never called: a ``stream=true`` file behind Serve
        gets its text a piece (30 s) at a time, when the piece is decoded."""
        self._require_ready()
        handle = self.replicas.options(multiplexed_model_id=adapter or "")
        for attempt in range(RETRIES_ON_REPLICA_LOSS + 1):
            try:
                result, replica = await handle.transcribe.remote(audio, options, adapter, rescorer, priority,
                                                                 tenant, key)
                break
            except BackPressureError:
                raise Overloaded("every replica's queue is full; retry shortly") from None
            except _REPLICA_LOST as exc:
                log.warning("a replica was lost during a decode (attempt %d): %s", attempt + 1,
                            type(exc).__name__)
        else:
            raise NotReady("the replica decoding this request stopped; retry")
        decoded_by = _decoded_by.get()
        if decoded_by is not None:
            decoded_by.append(replica)
        if isinstance(result, BaseException):  # a client error raised on the replica
            raise result
        return result


class ReplicaHeader:
    """Outermost middleware: every HTTP response names the replica(s) that decoded it in
    ``X-SplitASR-Replica`` (``ingress:<id>`` when no replica was needed, or the response started
    before a decode, as a stream's does)."""

    def __init__(self, app: ASGIApp, ingress_id: str):
        self.app = app
        self.ingress_id = ingress_id
        self._header = REPLICA_HEADER.lower().encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        decoded_by: list[str] = []
        token = _decoded_by.set(decoded_by)

        async def send_with_replica(message: Message) -> None:
            if message["type"] == "http.response.start":
                value = _replica_list(decoded_by, self.ingress_id)
                # Serve's proxy echoes the request id itself (the same one: it passed it in)
                headers = [h for h in message.get("headers", []) if h[0].lower() != _REQUEST_ID]
                message["headers"] = [*headers, (self._header, value.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_replica)
        finally:
            _decoded_by.reset(token)


def _replica_list(decoded_by: list[str], ingress_id: str) -> str:
    return ",".join(dict.fromkeys(decoded_by)) or f"ingress:{ingress_id}"


class ReplicaTrailer(grpc.aio.ServerInterceptor):
    """gRPC's counterpart of :class:`ReplicaHeader`: ``x-splitasr-replica`` in every call's trailing
    metadata."""

    def __init__(self, ingress_id: str):
        self.ingress_id = ingress_id

    async def intercept_service(self, continuation, handler_call_details: grpc.HandlerCallDetails):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        kwargs = {"request_deserializer": handler.request_deserializer,
                  "response_serializer": handler.response_serializer}
        trailer = self._trailer
        if handler.unary_unary or handler.stream_unary:
            inner = handler.unary_unary or handler.stream_unary

            async def call(request, context):
                with trailer(context):
                    return await inner(request, context)

            factory = grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler
            return factory(call, **kwargs)
        inner_stream = handler.unary_stream or handler.stream_stream

        async def stream(request, context):
            with trailer(context):
                async for response in inner_stream(request, context):
                    yield response

        factory = grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
        return factory(stream, **kwargs)

    @contextlib.contextmanager
    def _trailer(self, context: grpc.aio.ServicerContext) -> Iterator[None]:
        decoded_by: list[str] = []
        token = _decoded_by.set(decoded_by)
        try:
            yield
        finally:
            _decoded_by.reset(token)
            context.set_trailing_metadata(((REPLICA_HEADER.lower(), _replica_list(decoded_by, self.ingress_id)),))


def _serve_grpc_too(app: FastAPI, settings: Settings, engine: RoutedEngine, keys: ApiKeys, ingress_id: str) -> None:
    """Run the gRPC API (SPLITASR_GRPC_PORT) in the ingress for the app's lifetime, as ``serve`` does."""
    from ..api.rpc.server import create_grpc_server

    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(application: FastAPI):
        async with inner(application) as state:
            server = create_grpc_server(settings, engine, keys, jobs=application.state.jobs,
                                        interceptors=[ReplicaTrailer(ingress_id)])
            await server.start(engine)
            try:
                yield state
            finally:
                await server.stop(settings.shutdown_grace_seconds)

    app.router.lifespan_context = lifespan


@serve.deployment(name="SplitASRIngress")
@serve.ingress()
class Ingress:
    """The REST app of ``splitasr serve``, built in the replica (late-bound), over a :class:`RoutedEngine`."""

    def __init__(self, replicas: DeploymentHandle, settings: dict[str, Any]):
        self.replicas = replicas
        self.settings = Settings(_env_file=None, **settings)

    def __serve_build_asgi_app__(self) -> ASGIApp:
        from ..api.rest.app import create_app

        engine = RoutedEngine(self.settings, self.replicas)
        keys = ApiKeys.load(self.settings.api_keys_file, self.settings.api_keys)
        app = create_app(self.settings, engine=engine, api_keys=keys)
        ingress_id = serve.get_replica_context().replica_tag
        app.add_middleware(ReplicaHeader, ingress_id=ingress_id)
        if self.settings.grpc_port:
            _serve_grpc_too(app, self.settings, engine, keys, ingress_id)
        return app
