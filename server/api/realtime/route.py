"""``/v1/realtime?intent=transcription``: the WebSocket endpoint (authentication, limits, the loops).

Authentication: ``Authorization: Bearer <key>``, or, from browsers (which cannot set headers on a
WebSocket), the subprotocol ``openai-insecure-api-key.<key>`` next to ``realtime``, as OpenAI's
browser clients send it; the server answers with the ``realtime`` subprotocol and never echoes the key.
A connection that fails authentication, the tenant's rate limit or the stream limit gets one ``error``
event and is closed; bad events during a session get an ``error`` event and the session goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from ...errors import NotReady, PermissionDenied, SplitASRError
from ...observability import observe_realtime_session, request_scope
from . import events as ev
from .errors import CLOSE_INTERNAL, CLOSE_NORMAL, EventError, close_code
from .session import RealtimeSession

log = logging.getLogger(__name__)
router = APIRouter(tags=["realtime"])

PATH = "/v1/realtime"
SUBPROTOCOL = "realtime"
KEY_SUBPROTOCOL_PREFIX = "openai-insecure-api-key."
QUERY_PARAMS = ("intent", "model")
# close codes worth a metrics label; a client's own (any number) counts as "other"
LABELLED_CLOSE_CODES = frozenset({1000, 1001, 1005, 1006, 1008, 1011, 1013})


def bearer(websocket: WebSocket) -> str | None:
    """The API key from the Authorization header, else from the browser's subprotocol."""
    header = websocket.headers.get("authorization")
    if header:
        return header
    for protocol in websocket.scope.get("subprotocols", ()):
        if protocol.startswith(KEY_SUBPROTOCOL_PREFIX):
            return "Bearer " + protocol[len(KEY_SUBPROTOCOL_PREFIX):]
    return None


def _check_origin(websocket: WebSocket, cors_origins: str | None) -> None:
    """A browser page may connect only from the server's own origin or one of ``SPLITASR_CORS_ORIGINS``
    (WebSockets are not covered by CORS; clients other than browsers send no ``Origin``)."""
    origin = websocket.headers.get("origin")
    if not origin:
        return
    allowed = {o.strip().rstrip("/") for o in (cors_origins or "").split(",") if o.strip()}
    host = websocket.headers.get("host", "")
    own = {f"http://{host}", f"https://{host}"}
    if "*" in allowed or origin.rstrip("/") in allowed | own:
        return
    raise PermissionDenied(f"pages from {origin[:200]} may not connect; allow the origin with SPLITASR_CORS_ORIGINS")


def _check_query(websocket: WebSocket) -> str | None:
    """The connection URL's ``model`` (the transcription model), after checking its parameters."""
    query = websocket.query_params
    unknown = [k for k in query if k not in QUERY_PARAMS]
    if unknown:
        raise EventError(f"unknown query parameter {unknown[0][:40]!r}; use ?intent=transcription "
                         "(and optionally &model=NAME)", "invalid_value", unknown[0][:40])
    intent = query.get("intent", "transcription")
    if intent != "transcription":
        raise EventError(f"intent {intent[:40]!r} is not available: SplitASR serves ?intent=transcription",
                         "invalid_value", "intent")
    return query.get("model") or None


@router.websocket(PATH)
async def realtime(websocket: WebSocket) -> None:
    offered = websocket.scope.get("subprotocols", ())
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    start, status = time.perf_counter(), CLOSE_NORMAL
    with request_scope(websocket.headers.get("x-request-id")):
        try:
            status = await _session(websocket)
        finally:
            label = status if status in LABELLED_CLOSE_CODES else "other"
            observe_realtime_session(label, time.perf_counter() - start)
            log.info("realtime session closed (%d) after %.1f s", status, time.perf_counter() - start,
                     extra={"route": PATH, "status": status,
                            "duration_ms": round((time.perf_counter() - start) * 1000, 1)})


async def _session(websocket: WebSocket) -> int:
    """Serve one connection; the close code it ended with."""
    state = websocket.app.state
    engine, settings = state.engine, state.settings
    outbound: asyncio.Queue = asyncio.Queue()
    writer = asyncio.create_task(_write(websocket, outbound))
    session = None
    try:
        try:
            _check_origin(websocket, settings.cors_origins)
            address = websocket.client.host if websocket.client else "unknown"
            # failed keys count against the address as on REST and gRPC: guessing is blocked here too
            tenant = state.auth_limiter.authenticate(state.api_keys, bearer(websocket), address, "realtime")
            state.rate_limiter.check(tenant)
            model = _check_query(websocket)
            if not engine.ready:
                raise NotReady(engine.load_error or "the backbone is still loading; retry shortly")
            with engine.streams.hold(tenant):  # shared with gRPC StreamingRecognize
                session = RealtimeSession(engine, settings, tenant, outbound.put_nowait, model)
                await _serve(websocket, session, settings.stream_idle_timeout_s)
                return CLOSE_NORMAL
        except SplitASRError as exc:
            raise EventError.from_error(exc, fatal=True) from None
    except EventError as exc:  # the session must end: say why, then close
        if not exc.sent:
            outbound.put_nowait(ev.error_event(exc))
        return await _close(websocket, outbound, writer, close_code(exc), exc.message)
    except WebSocketDisconnect as exc:
        return exc.code
    except Exception:  # logged; the client learns only that the server failed
        log.exception("realtime session failed")
        outbound.put_nowait(ev.error_event(EventError("internal server error", "internal_error")))
        return await _close(websocket, outbound, writer, CLOSE_INTERNAL, "internal error")
    finally:
        if session is not None:
            await session.close()
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await writer


async def _serve(websocket: WebSocket, session: RealtimeSession, idle_s: float) -> None:
    """Read client events until the client leaves; the stream's events go out meanwhile."""
    pump = asyncio.create_task(session.pump())
    receive = None
    try:
        while True:
            receive = receive or asyncio.ensure_future(websocket.receive())
            done, _ = await asyncio.wait({receive, pump}, timeout=idle_s, return_when=asyncio.FIRST_COMPLETED)
            if pump in done:  # the stream ended on an error (pump re-raises it)
                pump.result()
                return
            if receive not in done:
                if session.busy:  # waiting for transcripts is not idling
                    continue
                raise EventError(f"no event for {idle_s:g} s: a session must keep sending audio (silence too) "
                                 "or close", "idle_timeout", fatal=True)
            message, receive = receive.result(), None
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", CLOSE_NORMAL))
            if message.get("text") is not None:
                session.handle(message["text"])
            else:
                session.reject(EventError("send events as JSON text messages, not binary ones", "invalid_json"))
    finally:
        for task in (pump, receive):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


async def _write(websocket: WebSocket, outbound: asyncio.Queue) -> None:
    while (event := await outbound.get()) is not None:
        await websocket.send_text(json.dumps(event, ensure_ascii=False))


async def _close(websocket: WebSocket, outbound: asyncio.Queue, writer: asyncio.Task, code: int, reason: str) -> int:
    outbound.put_nowait(None)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer, 5)
    if websocket.application_state == WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):
            await websocket.close(code, reason[:120])  # a close reason holds at most 123 bytes
    return code
