"""The one place where REST maps errors to status codes, in OpenAI's error shape.

Every error a client can get is ``{"error": {"message", "type", "param", "code"}}``: our own errors,
request validation, and the framework's own (unknown route, wrong method, a multipart body it cannot
parse, e.g. too many parts), as well as the protocol-level ones (:mod:`.protocol`) and the
middlewares' (401/429 before the body, 413).
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ...errors import SplitASRError
from .disconnect import ClientDisconnected

log = logging.getLogger(__name__)


def error_body(message: str, code: str, param: str | None = None) -> dict:
    kind = "invalid_request_error" if code not in ("internal_error", "overloaded", "not_ready", "insufficient_storage") else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# framework errors (Starlette's HTTPException) by status: our code and a clearer message than "Not Found"
_FRAMEWORK_CODES = {400: "invalid_request", 401: "unauthenticated", 404: "not_found", 405: "method_not_allowed",
                    413: "payload_too_large", 415: "unsupported_media_type", 422: "invalid_request"}


def error_response(exc: SplitASRError, headers: dict[str, str] | None = None) -> JSONResponse:
    """The response for one of our errors (``Retry-After`` on 429 and 503)."""
    headers = dict(headers or {})
    if exc.http_status in (429, 503):
        headers["Retry-After"] = str(max(1, math.ceil(getattr(exc, "retry_after_s", 1))))
    body = error_body(str(exc), exc.code, getattr(exc, "param", None))
    return JSONResponse(body, status_code=exc.http_status, headers=headers or None)


# nginx's "client closed request": nobody reads it, but the access log and metrics show what happened
CLIENT_CLOSED_REQUEST = 499


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SplitASRError)
    async def _known(_: Request, exc: SplitASRError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(ClientDisconnected)
    async def _gone(request: Request, _: ClientDisconnected) -> JSONResponse:
        log.info("client closed the connection before the response; its decode was cancelled")
        return JSONResponse(error_body("client closed the request", "client_closed_request"),
                            status_code=CLIENT_CLOSED_REQUEST)

    @app.exception_handler(StarletteHTTPException)
    async def _framework(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"no such route: {request.method} {request.url.path[:200]} (see /docs)"
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            message = f"method {request.method} is not allowed on {request.url.path[:200]}; allowed: {allowed}"
        else:
            message = str(exc.detail)
        code = _FRAMEWORK_CODES.get(exc.status_code, "invalid_request" if exc.status_code < 500 else "internal_error")
        return JSONResponse(error_body(message, code), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        param = None
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
            param = param or (".".join(loc) or None)
            problems.append(f"{'.'.join(loc) or 'request'}: {err.get('msg', 'invalid')}")
        message = "invalid request: " + "; ".join(problems)
        return JSONResponse(error_body(message, "invalid_request", param), status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Never send a stack trace to a client; the log keeps it.
        log.exception("unhandled error")
        return JSONResponse(error_body("internal server error", "internal_error"), status_code=500)
