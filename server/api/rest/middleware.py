"""ASGI middleware that gives every request an id, counts it in the metrics and writes one access log line
(client address, method, path, status, duration; the address is a trusted proxy's ``X-Forwarded-For``
client when SPLITASR_TRUSTED_PROXIES names the peer, else the peer)."""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...observability import REQUEST_ID_HEADER, observe_http, request_scope
from .scope import client_host, find_route

log = logging.getLogger("splitasr.access")

# probes and scrapes arrive every few seconds: log them at debug level only
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
UNMATCHED_ROUTE = "unmatched"  # one label for every unknown path, so scanners cannot add series


class RequestObserver:
    """Outermost middleware: ``X-Request-ID`` in and out (made up when absent), latency and status
    per method and route template in ``splitasr_http_requests_total`` and
    ``splitasr_http_request_duration_seconds``."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self._header = REQUEST_ID_HEADER.lower().encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers", [])).get(self._header)
        start = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        with request_scope(incoming) as request_id:

            async def send_with_id(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    message["headers"] = [*message.get("headers", []), (self._header, request_id.encode())]
                await send(message)

            try:
                await self.app(scope, receive, send_with_id)
            finally:
                seconds = time.perf_counter() - start
                route = route_template(scope)
                observe_http(scope.get("method", ""), route, status, seconds)
                path = scope.get("path", "")
                client = client_host(scope)
                log.log(logging.DEBUG if path in QUIET_PATHS else logging.INFO,
                        "%s %s %s %d %.1f ms", client, scope.get("method"), path[:200], status, seconds * 1000,
                        extra={"client": client, "method": scope.get("method"), "path": path[:200], "route": route,
                               "status": status, "duration_ms": round(seconds * 1000, 1)})


def route_template(scope: Scope) -> str:
    """The matched route's path template (``/v1/adapters/{name}``), never the raw path."""
    matched = getattr(scope.get("route"), "path", None)  # set by the router when it got that far
    if matched:
        return matched
    _, route = find_route(scope)  # a request answered before the router (401, 413)
    return getattr(route, "path", None) or UNMATCHED_ROUTE
