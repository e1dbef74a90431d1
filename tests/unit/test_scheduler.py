"""The batching scheduler: batches form, results go to their own request, failures stay isolated."""

from __future__ import annotations

import threading
import time

import pytest

from splitasr.engine.scheduler import Scheduler
from splitasr.errors import NotReady, Overloaded


def make(batch_fn, **kwargs) -> Scheduler:
    s = Scheduler(batch_fn, **kwargs)
    s.start()
    return s


def test_requests_are_batched_and_answered_in_order():
    sizes = []

    def double(payloads, group):
        sizes.append(len(payloads))
        return [p * 2 for p in payloads]

    s = make(double, max_batch_size=4, max_wait_ms=200)
    futures = [s.submit(i) for i in range(8)]
    assert [f.result(5) for f in futures] == [i * 2 for i in range(8)]
    assert max(sizes) > 1, "concurrent submissions should share a batch"
    s.stop(5)


def test_groups_never_mix():
    seen = []

    def record(payloads, group):
        seen.append((group, list(payloads)))
        return payloads

    s = make(record, max_batch_size=8, max_wait_ms=100)
    futures = [s.submit(i, group=i % 2) for i in range(6)]
    [f.result(5) for f in futures]
    for group, payloads in seen:
        assert all(p % 2 == group for p in payloads)
    s.stop(5)


def test_one_bad_request_does_not_fail_its_neighbours():
    def fragile(payloads, group):
        if "bad" in payloads:
            if len(payloads) > 1:
                raise RuntimeError("batch poisoned")
            raise ValueError("this one is bad")
        return [p.upper() for p in payloads]

    s = make(fragile, max_batch_size=4, max_wait_ms=200)
    futures = [s.submit(p) for p in ("a", "bad", "c")]
    assert futures[0].result(5) == "A"
    assert futures[2].result(5) == "C"
    with pytest.raises(ValueError, match="this one is bad"):
        futures[1].result(5)
    s.stop(5)


def test_overload_is_refused_with_a_clear_error():
    release = threading.Event()

    def slow(payloads, group):
        release.wait(5)
        return payloads

    s = make(slow, max_batch_size=1, max_queue=2)
    first, second = s.submit(1), s.submit(2)
    with pytest.raises(Overloaded, match="capacity"):
        s.submit(3)
    release.set()
    assert (first.result(5), second.result(5)) == (1, 2)
    time.sleep(0.05)
    assert s.submit(4).result(5) == 4  # capacity is released once requests finish
    s.stop(5)


def test_stop_drains_queued_work_then_refuses():
    def slowish(payloads, group):
        time.sleep(0.05)
        return payloads

    s = make(slowish, max_batch_size=1)
    futures = [s.submit(i) for i in range(5)]
    s.stop(10)
    assert [f.result(0) for f in futures] == list(range(5))
    with pytest.raises(NotReady):
        s.submit(9)
