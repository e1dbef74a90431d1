"""The ingress deployment: the FastAPI app (REST, the web page, the Realtime API, metrics) over an
engine that sends each decode to a replica chosen by its adapter.

Authentication, adapter uploads and deletes, name resolution, rate limits and stream slots happen
here, on the shared store; the decode itself goes to the replica deployment with
``multiplexed_model_id`` = the adapter's sha256, so Serve routes it to a replica that already holds
that adapter. The ingress keeps a CPU copy of the backbone only to validate uploads and request
options against it; it runs no decode worker.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from contextvars import ContextVar
from typing import Any

import numpy as np
import ray.exceptions
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
                               key: Hashable | None = None) -> Transcription:
        """Decode on a replica that holds ``adapter`` (Serve's multiplexed routing); a replica lost
        mid-request is retried once on another, then answered with a retryable 503."""
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
                value = ",".join(dict.fromkeys(decoded_by)) or f"ingress:{self.ingress_id}"
                # Serve's proxy echoes the request id itself (the same one: it passed it in)
                headers = [h for h in message.get("headers", []) if h[0].lower() != _REQUEST_ID]
                message["headers"] = [*headers, (self._header, value.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_replica)
        finally:
            _decoded_by.reset(token)


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
        app.add_middleware(ReplicaHeader, ingress_id=serve.get_replica_context().replica_tag)
        return app
