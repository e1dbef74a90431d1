"""ASGI middleware that authenticates a REST request from its headers, before its body is read.

Every route except the probes, the metrics, the status, the API docs and the web page's files needs a
key (the Realtime WebSocket checks its own). A request without a valid
one is answered at once (401, or 429 for an address blocked after too many failures or a tenant over
its rate limit) and, when it announced a body, its connection is closed: an unauthenticated upload is
never read, parsed or spooled to disk. The tenant goes to ``request.state.tenant`` for the routes.
A path that matches no route (or not with this method) goes on to the router's 404 / 405, which
reads no body either; its connection is closed too when a body was announced.
"""

from __future__ import annotations

from starlette.datastructures import State
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...errors import SplitASRError
from .errors import error_response
from .scope import client_host, find_route

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v1/status", "/docs", "/docs/oauth2-redirect",
                          "/redoc", "/openapi.json", "/ui"})
PUBLIC_PREFIXES = ("/ui/",)  # the web page's static files: the page asks for a key itself
TENANT_STATE = "tenant"


def _announces_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"", b"0")):
            return True
    return False


class AuthGuard:
    """See the module docstring. ``state`` is the app's state: ``api_keys`` and ``engine`` (its limiters)."""

    def __init__(self, app: ASGIApp, state: State):
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers", [])
        if find_route(scope)[0] != Match.FULL:
            await self.app(scope, receive, self._closing(send) if _announces_body(headers) else send)
            return
        authorization = next((v.decode("latin-1") for n, v in headers if n == b"authorization"), None)
        state = self.state
        try:
            tenant = state.auth_limiter.authenticate(state.api_keys, authorization, client_host(scope), "rest")
            state.rate_limiter.check(tenant)
        except SplitASRError as exc:
            close = {"Connection": "close"} if _announces_body(headers) else None
            await error_response(exc, close)(scope, receive, send)
            return
        scope.setdefault("state", {})[TENANT_STATE] = tenant
        await self.app(scope, receive, send)

    @staticmethod
    def _closing(send: Send) -> Send:
        async def send_and_close(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
            await send(message)

        return send_and_close
