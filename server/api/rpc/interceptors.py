"""The one place where gRPC calls are authenticated and errors become status codes.

Every method of our services runs inside :class:`ApiInterceptor`: the bearer token in the
``authorization`` metadata picks the tenant (the same keys as REST), which servicers read with
:func:`current_tenant`; an exception becomes a status code with the error's message. Anything that
is not a :class:`~splitasr.errors.SplitASRError` is logged with its trace and sent as INTERNAL
"internal error". Health checking and reflection need no token (probes and ``grpcurl``).

Every call also gets a request id (the client's ``x-request-id`` metadata when it is a plain short id,
else a fresh one), which its log lines carry and which goes back in the initial metadata, and is
counted in the gRPC metrics (``grpc_service``, ``grpc_method``, ``grpc_type``, ``grpc_code``).

``TooLarge`` maps to RESOURCE_EXHAUSTED, the code gRPC itself gives a message over the size limit,
so a client sees one code for "too big" whichever layer noticed. A full server (``ServerBusy``: the
decode queue or the stream slots) is UNAVAILABLE, which clients retry, with a ``google.rpc.RetryInfo``
delay; quotas stay RESOURCE_EXHAUSTED (a rate limit carries a RetryInfo too).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager

import grpc
from google.protobuf import any_pb2, duration_pb2

from splitasr_device._proto import status_pb2

from ...errors import (
    DecodeTimeout,
    InvalidInput,
    NotFound,
    NotReady,
    Overloaded,
    PermissionDenied,
    ServerBusy,
    SplitASRError,
    StorageFull,
    StoredAdapterCorrupt,
    TooLarge,
    Unauthenticated,
)
from ...observability import (
    REQUEST_ID_METADATA_KEY,
    observe_grpc,
    observe_grpc_started,
    request_id_from_metadata,
    request_scope,
)
from ...tenants import ApiKeys, AuthFailureLimiter, RateLimiter

log = logging.getLogger(__name__)

_TENANT: contextvars.ContextVar[str] = contextvars.ContextVar("splitasr_grpc_tenant")
PUBLIC_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
MAX_DETAILS_CHARS = 2000
STATUS_DETAILS_KEY = "grpc-status-details-bin"  # google.rpc.Status, as grpcio-status writes it
RETRY_INFO_TYPE_URL = "type.googleapis.com/google.rpc.RetryInfo"

# most specific first: TooLarge is an InvalidInput
STATUS_BY_ERROR: tuple[tuple[type[SplitASRError], grpc.StatusCode], ...] = (
    (TooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),  # BadAudio, InvalidAdapter too
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (ServerBusy, grpc.StatusCode.UNAVAILABLE),  # the whole server is full: retry after its RetryInfo
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),  # a quota (RateLimited, a tenant's streams ...)
    (StorageFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DecodeTimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
    (NotReady, grpc.StatusCode.UNAVAILABLE),  # StoreUnavailable too
    (StoredAdapterCorrupt, grpc.StatusCode.DATA_LOSS),
)


def current_tenant() -> str:
    """The tenant of the call being served (set by the interceptor)."""
    return _TENANT.get()


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, TimeoutError):  # asyncio.wait_for on the call's own deadline
        return grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before the result was ready"
    for cls, code in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return code, str(exc)
    return grpc.StatusCode.INTERNAL, "internal error"


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
    if isinstance(exc, grpc.aio.AbortError):  # a servicer aborted on purpose
        raise exc
    code, message = status_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.error("%s failed", method, exc_info=exc)
    if len(message) > MAX_DETAILS_CHARS:  # details travel in a header: past 8 KiB clients drop the call
        message = message[:MAX_DETAILS_CHARS] + "..."
    await context.abort(code, message, trailing_metadata=retry_details(code, message, exc))


def retry_details(code: grpc.StatusCode, message: str, exc: BaseException) -> tuple[tuple[str, bytes], ...]:
    """For an error that says when to retry (``retry_after_s``): the standard ``google.rpc.Status``
    with a ``google.rpc.RetryInfo`` detail, in the ``grpc-status-details-bin`` trailer."""
    seconds = getattr(exc, "retry_after_s", None)
    if seconds is None:
        return ()
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(seconds * 1e9))
    info = any_pb2.Any(type_url=RETRY_INFO_TYPE_URL,
                       value=status_pb2.RetryDelay(retry_delay=delay).SerializeToString())
    status = status_pb2.StatusDetails(code=code.value[0], message=message, details=[info])
    return ((STATUS_DETAILS_KEY, status.SerializeToString()),)


@asynccontextmanager
async def _observed(context: grpc.aio.ServicerContext, method: str, grpc_type: str):
    """Request id and metrics around one call; the status is what the call ended with."""
    start = time.perf_counter()
    observe_grpc_started(method, grpc_type)
    with request_scope(request_id_from_metadata(context.invocation_metadata())) as request_id:
        await context.send_initial_metadata(((REQUEST_ID_METADATA_KEY, request_id),))
        status = "INTERNAL"
        try:
            yield
            status = "OK"
        except grpc.aio.AbortError:
            code = context.code()
            status = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
            raise
        except (asyncio.CancelledError, GeneratorExit):  # the client went away
            status = "CANCELLED"
            raise
        finally:
            observe_grpc(method, grpc_type, status, time.perf_counter() - start)


def _call_type(handler: grpc.RpcMethodHandler) -> str:
    """The ``grpc_type`` label: unary, client_stream, server_stream or bidi_stream."""
    if handler.request_streaming:
        return "bidi_stream" if handler.response_streaming else "client_stream"
    return "server_stream" if handler.response_streaming else "unary"


def peer_address(context: grpc.aio.ServicerContext) -> str:
    """The client's IP address from ``context.peer()`` (``ipv4:1.2.3.4:5678``, ``ipv6:[::1]:5678``)."""
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6" and rest.startswith("["):
        return rest[1:].split("]", 1)[0]
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    return peer or "unknown"


Authenticate = Callable[[grpc.aio.ServicerContext], str]


def _wrap(handler: grpc.RpcMethodHandler, authenticate: Authenticate, method: str) -> grpc.RpcMethodHandler:
    kwargs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    grpc_type = _call_type(handler)
    if handler.unary_unary or handler.stream_unary:
        inner: Callable[..., Awaitable] = handler.unary_unary or handler.stream_unary

        async def call(request, context):
            async with _observed(context, method, grpc_type):
                try:
                    _TENANT.set(authenticate(context))
                    return await inner(request, context)
                except Exception as exc:  # noqa: BLE001 - mapped to a status code
                    await _abort(context, exc, method)

        factory = grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler
        return factory(call, **kwargs)

    inner_stream = handler.unary_stream or handler.stream_stream

    async def stream(request, context):
        async with _observed(context, method, grpc_type):
            try:
                _TENANT.set(authenticate(context))
                async for response in inner_stream(request, context):
                    yield response
            except Exception as exc:  # noqa: BLE001 - mapped to a status code
                await _abort(context, exc, method)

    factory = grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
    return factory(stream, **kwargs)


class ApiInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, api_keys: ApiKeys, rate_limiter: RateLimiter | None = None,
                 auth_limiter: AuthFailureLimiter | None = None):
        self.api_keys = api_keys
        self.rate_limiter = rate_limiter
        self.auth_limiter = auth_limiter or AuthFailureLimiter(0, 1.0)

    def _tenant(self, authorization: str | None, context: grpc.aio.ServicerContext) -> str:
        tenant = self.auth_limiter.authenticate(self.api_keys, authorization, peer_address(context), "grpc")
        if self.rate_limiter is not None:
            self.rate_limiter.check(tenant)
        return tenant

    async def intercept_service(self, continuation, handler_call_details: grpc.HandlerCallDetails):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(PUBLIC_PREFIXES):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        authorization = metadata.get("authorization")
        return _wrap(handler, lambda context: self._tenant(authorization, context), method)
