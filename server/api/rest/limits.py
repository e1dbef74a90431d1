"""ASGI middleware that rejects request bodies above a size limit with 413, before they are parsed."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_body


class BodySizeLimit:
    """Checks ``Content-Length`` up front and counts streamed bytes (chunked uploads) as they arrive."""

    def __init__(self, app: ASGIApp, max_bytes: int, per_path: dict[str, int] | None = None):
        """``per_path``: limits for routes whose path starts with the key (e.g. adapter uploads)."""
        self.app = app
        self.max_bytes = max_bytes
        self.per_path = per_path or {}

    def limit_for(self, path: str) -> int:
        return next((n for prefix, n in self.per_path.items() if path.startswith(prefix)), self.max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._reject(send, limit)
            return
        received = 0
        exceeded = False

        async def limited_receive() -> Message:
            # Past the limit, pretend the client went away: the app stops reading and we answer 413.
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not exceeded:
                await send(message)

        await self.app(scope, limited_receive, guarded_send)
        if exceeded:
            await self._reject(send, limit)

    async def _reject(self, send: Send, limit: int) -> None:
        mib = limit / (1024 * 1024)
        body = json.dumps(
            error_body(f"request body exceeds the upload limit of {mib:.1f} MiB", "payload_too_large")
        ).encode()
        # close the connection: uvicorn would otherwise read (and discard) the rest of the oversized body
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
