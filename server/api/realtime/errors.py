"""The one place where the Realtime transport turns errors into ``error`` events and close codes."""

from __future__ import annotations

from ...errors import SplitASRError

SERVER_ERROR_CODES = ("internal_error", "overloaded", "rate_limit_exceeded", "not_ready", "insufficient_storage")

# WebSocket close codes (RFC 6455 section 7.4)
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008  # authentication, a bad connection request, limits
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN_LATER = 1013  # overloaded, rate-limited, loading


class EventError(Exception):
    """A client event (or connection) the session cannot accept. ``fatal``: the session must end."""

    def __init__(self, message: str, code: str = "invalid_request", param: str | None = None,
                 event_id: str | None = None, fatal: bool = False):
        super().__init__(message)
        self.message, self.code, self.param, self.event_id, self.fatal = message, code, param, event_id, fatal
        self.sent = False  # already reported to the client in an error event

    @property
    def type(self) -> str:
        return "server_error" if self.code in SERVER_ERROR_CODES else "invalid_request_error"

    @classmethod
    def from_error(cls, exc: SplitASRError, param: str | None = None, event_id: str | None = None,
                   fatal: bool = False) -> EventError:
        return cls(str(exc), exc.code, param, event_id, fatal)


def close_code(exc: EventError) -> int:
    """How a session that ``exc`` ended closes: try again later when the server was busy."""
    busy = ("overloaded", "rate_limit_exceeded", "too_many_failed_authentications", "not_ready")
    return CLOSE_TRY_AGAIN_LATER if exc.code in busy else CLOSE_POLICY
