"""The one place where REST maps errors to status codes, in OpenAI's error shape."""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ...errors import SplitASRError

log = logging.getLogger(__name__)


def error_body(message: str, code: str, param: str | None = None) -> dict:
    kind = "invalid_request_error" if code not in ("internal_error", "overloaded", "not_ready", "insufficient_storage") else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SplitASRError)
    async def _known(_: Request, exc: SplitASRError) -> JSONResponse:
        retry_after = math.ceil(getattr(exc, "retry_after_s", 1))
        headers = {"Retry-After": str(retry_after)} if exc.http_status in (429, 503) else None
        body = error_body(str(exc), exc.code, getattr(exc, "param", None))
        return JSONResponse(body, status_code=exc.http_status, headers=headers)

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
