"""Fixtures for every unit test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """The models here are tiny: one intra-op thread is as fast, and on a busy 2-core machine the
    default spinning OpenMP threads made the adapter and training tests 7-8x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
