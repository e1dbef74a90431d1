"""The HTTP/1.1 connection handler ``splitasr serve`` gives uvicorn: limits on what a client may hold.

uvicorn's own protocols bound none of these (its default, httptools, not even the header size), so a
handful of connections could hold memory and sockets for ever. This is uvicorn's h11 protocol with:

- **header size**: at most ``max_header_bytes`` for the request line and headers (h11's receive
  buffer limit; h11 never buffers more), else 431;
- **header deadline**: the head must be complete ``header_timeout_s`` after its first byte (for the
  first request: after the connection opens), else 408 and the connection closes;
- **body deadline** (as Apache's ``mod_reqtimeout``): ``body_timeout_s`` after the head, extended by
  one second per :data:`BODY_MIN_RATE_BYTES_PER_S` bytes received, so a client that sends at least
  that fast on average always finishes and one that trickles (1 byte/s) is cut off with 408. Time
  while the server itself has paused reading (flow control) does not count.

Protocol-level errors answer in the API's error shape (``{"error": {...}}``), like every other error.
Keep-alive idle time stays uvicorn's ``timeout_keep_alive``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import error_body

log = logging.getLogger(__name__)

BODY_MIN_RATE_BYTES_PER_S = 16 * 1024  # 128 kbit/s on average: a 25 MiB upload gets up to ~27 min
_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def _raw_error(status: int, message: str, code: str) -> bytes:
    body = json.dumps(error_body(message, code)).encode()
    head = (f"HTTP/1.1 {status} ".encode() + _REASONS[status] + b"\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\n".encode() + b"connection: close\r\n\r\n")
    return head + body


class GuardedH11Protocol(H11Protocol):
    """See the module docstring; the limits are class attributes set by :func:`guarded_protocol`."""

    max_header_bytes = 16 * 1024
    header_timeout_s = 10.0
    body_timeout_s = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_started: float | None = time.monotonic()
        self._head_bytes = 0
        self._body_started: float | None = None
        self._body_bytes = 0
        self._paused_s = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._arm(self.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        state = self.conn.their_state
        if state is h11.IDLE and self._head_started is None:  # the first byte of a keep-alive request
            self._head_started, self._head_bytes = time.monotonic(), 0
            self._arm(self.header_timeout_s)
        if self._head_started is not None:
            self._head_bytes += len(data)
        elif state is h11.SEND_BODY:
            self._body_bytes += len(data)
        super().data_received(data)
        state = self.conn.their_state
        if self._head_started is not None and state not in (h11.IDLE, h11.ERROR):
            self._head_started = None  # head complete
            self._disarm()
            if state is h11.SEND_BODY:
                self._body_started, self._body_bytes, self._paused_s = time.monotonic(), 0, 0.0
                self._arm(self.body_timeout_s)
        elif self._body_started is not None and state is not h11.SEND_BODY:
            self._body_started = None  # body complete
            self._disarm()

    # deadlines -----------------------------------------------------------------------------------
    def _arm(self, delay: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(max(delay, 0.05), self._check_deadline)

    def _disarm(self) -> None:
        timer, self._timer = getattr(self, "_timer", None), None
        if timer is not None:
            timer.cancel()

    def _check_deadline(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        now = time.monotonic()
        if self._head_started is not None:
            left = self._head_started + self.header_timeout_s - now
            if left <= 0:
                self._refuse(408, f"request headers not received within {self.header_timeout_s:g} s", "timeout")
            else:
                self._arm(left)
            return
        if self._body_started is None:
            return
        if self.flow.read_paused:  # the server is not reading: not the client's time
            self._paused_s += 1.0
            self._arm(1.0)
            return
        deadline = (self._body_started + self._paused_s + self.body_timeout_s
                    + self._body_bytes / BODY_MIN_RATE_BYTES_PER_S)
        if now >= deadline:
            self._refuse(408, f"request body too slow: {self._body_bytes} bytes in {now - self._body_started:.0f} s "
                              f"(send at least {BODY_MIN_RATE_BYTES_PER_S // 1024} KiB/s)", "timeout")
        else:
            self._arm(deadline - now)

    def _refuse(self, status: int, message: str, code: str) -> None:
        client = self.client[0] if self.client else "unknown"
        log.warning("closing connection from %s: %s", client, message, extra={"client": client, "status": status})
        if self.cycle is None or not self.cycle.response_started:
            self.transport.write(_raw_error(status, message, code))
        if self.cycle is not None:
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """h11 found the request malformed or its head over ``max_header_bytes``: answer in our shape."""
        self._disarm()
        if self._head_started is not None and self._head_bytes > self.max_header_bytes:
            status, message, code = (431, f"request headers exceed {self.max_header_bytes} bytes",
                                     "request_header_fields_too_large")
        else:
            status, message, code = 400, "malformed HTTP request", "invalid_request"
        client = self.client[0] if self.client else "unknown"
        log.info("%s %d from %s", message, status, client, extra={"client": client, "status": status})
        self.transport.write(_raw_error(status, message, code))
        self.transport.close()


def guarded_protocol(max_header_bytes: int, header_timeout_s: float, body_timeout_s: float) -> type[H11Protocol]:
    """A :class:`GuardedH11Protocol` subclass with these limits, for ``uvicorn.Config(http=...)``."""
    return type("SplitASRHttpProtocol", (GuardedH11Protocol,), {
        "max_header_bytes": max_header_bytes, "header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s,
    })


def uvicorn_config(app, settings, **overrides):
    """How ``serve`` runs the REST app under uvicorn (HTTPS when SPLITASR_TLS_CERT/_KEY are set): our
    h11 protocol with header size and header/body deadlines, no proxy headers (the app believes
    ``X-Forwarded-For`` from SPLITASR_TRUSTED_PROXIES only)."""
    import uvicorn

    options = {
        "host": settings.host, "port": settings.port, "log_level": settings.log_level,
        "log_config": None,  # keep the handlers configure_logging installed
        "access_log": False,  # the RequestObserver middleware logs each request, with its id
        "timeout_graceful_shutdown": settings.shutdown_grace_seconds,
        "ssl_certfile": settings.tls_cert, "ssl_keyfile": settings.tls_key,
        "http": guarded_protocol(settings.http_max_header_bytes, settings.http_header_timeout_s,
                                 settings.http_body_timeout_s),
        "h11_max_incomplete_event_size": settings.http_max_header_bytes,
        "proxy_headers": False, "server_header": False,
    }
    return uvicorn.Config(app, **{**options, **overrides})
