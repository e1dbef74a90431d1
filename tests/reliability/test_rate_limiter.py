"""The per-tenant token bucket on its own, with a fake clock."""

from __future__ import annotations

import pytest

from splitasr.errors import RateLimited
from splitasr.tenants import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill_per_tenant():
    clock = Clock()
    limiter = RateLimiter(per_minute=60, burst=3, clock=clock)  # one a second
    for _ in range(3):
        limiter.check("alice")
    with pytest.raises(RateLimited, match="60 requests per minute") as info:
        limiter.check("alice")
    assert 0.9 < info.value.retry_after_s <= 1.0
    limiter.check("bob")  # another tenant has its own bucket
    clock.now += 1.0
    limiter.check("alice")  # one token back after a second
    with pytest.raises(RateLimited):
        limiter.check("alice")
    clock.now += 3600
    for _ in range(3):  # refills up to the burst, never beyond
        limiter.check("alice")
    with pytest.raises(RateLimited):
        limiter.check("alice")


def test_zero_rate_means_no_limit():
    limiter = RateLimiter(per_minute=0, burst=1)
    assert not limiter.enabled
    for _ in range(1000):
        limiter.check("alice")
