"""Retries with exponential backoff and full jitter, for calls that are safe to repeat."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
from google.protobuf.message import DecodeError

from ._proto import status_pb2

log = logging.getLogger(__name__)

T = TypeVar("T")

# The server was unreachable or too slow: worth another try. Everything else is an answer.
RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
STATUS_DETAILS_KEY = "grpc-status-details-bin"  # google.rpc.Status (with RetryInfo from a full server)
MAX_SERVER_DELAY_S = 30.0  # a server's RetryInfo is honoured up to this


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8  # tries in all, the first included (about 15 s of waiting at most)
    base_delay_s: float = 0.2
    max_delay_s: float = 5.0

    def delay(self, retry: int) -> float:
        """Full jitter (uniform in [0, min(max, base * 2^retry)]) keeps reconnecting devices apart."""
        return random.uniform(0.0, min(self.max_delay_s, self.base_delay_s * 2**retry))


def retryable(error: BaseException) -> bool:
    return isinstance(error, grpc.RpcError) and error.code() in RETRYABLE_CODES


def server_retry_delay(error: BaseException) -> float | None:
    """The delay a ``google.rpc.RetryInfo`` in the error's details asks for (capped at
    :data:`MAX_SERVER_DELAY_S`), or None when the server sent none."""
    trailing = getattr(error, "trailing_metadata", None)
    try:
        metadata = (trailing() if callable(trailing) else None) or ()
    except Exception:  # noqa: BLE001 - an error without metadata: no server delay
        return None
    for key, value in metadata:
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.StatusDetails.FromString(value)
            for detail in status.details:
                if detail.type_url.endswith("/google.rpc.RetryInfo"):
                    delay = status_pb2.RetryDelay.FromString(detail.value).retry_delay.ToNanoseconds() / 1e9
                    return min(MAX_SERVER_DELAY_S, max(0.0, delay))
        except DecodeError:  # malformed details: fall back to our own backoff
            return None
    return None


def retry_delay(error: BaseException, policy: RetryPolicy, retry: int) -> float:
    """The server's RetryInfo delay when it sent one, else ``policy``'s backoff with jitter."""
    delay = server_retry_delay(error)
    return policy.delay(retry) if delay is None else delay


def call_with_retry(fn: Callable[[], T], policy: RetryPolicy, what: str = "call",
                    sleep: Callable[[float], None] = time.sleep) -> T:
    """``fn()``; on UNAVAILABLE or DEADLINE_EXCEEDED, wait (the server's RetryInfo delay, else backoff)
    and try again up to ``policy.attempts``."""
    for retry in range(policy.attempts):
        try:
            return fn()
        except grpc.RpcError as exc:
            if not retryable(exc) or retry == policy.attempts - 1:
                raise
            delay = retry_delay(exc, policy, retry)
            log.info("%s: %s (%s); retrying in %.2f s", what, exc.code().name, exc.details(), delay)
            sleep(delay)
    raise AssertionError("unreachable")
