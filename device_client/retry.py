"""Retries with exponential backoff and full jitter, for calls that are safe to repeat."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

log = logging.getLogger(__name__)

T = TypeVar("T")

# The server was unreachable or too slow: worth another try. Everything else is an answer.
RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


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


def call_with_retry(fn: Callable[[], T], policy: RetryPolicy, what: str = "call",
                    sleep: Callable[[float], None] = time.sleep) -> T:
    """``fn()``; on UNAVAILABLE or DEADLINE_EXCEEDED, wait and try again up to ``policy.attempts``."""
    for retry in range(policy.attempts):
        try:
            return fn()
        except grpc.RpcError as exc:
            if not retryable(exc) or retry == policy.attempts - 1:
                raise
            delay = policy.delay(retry)
            log.info("%s: %s (%s); retrying in %.2f s", what, exc.code().name, exc.details(), delay)
            sleep(delay)
    raise AssertionError("unreachable")
