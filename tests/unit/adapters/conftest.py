"""Fixtures for the adapter tests (helpers live in tests/adapter_factory.py)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import WhisperForConditionalGeneration

from splitasr.adapters import Adapter, BackboneSpec
from tests.adapter_factory import CASES, FRAMES, N_MELS, make_case, tiny_whisper


@pytest.fixture(scope="session")
def base_model() -> WhisperForConditionalGeneration:
    return tiny_whisper(0)


@pytest.fixture(scope="session")
def spec(base_model: nn.Module) -> BackboneSpec:
    return BackboneSpec.from_model("tiny-random", base_model)


@pytest.fixture
def model(base_model: nn.Module) -> nn.Module:
    """A fresh copy of the tiny backbone (tests may attach banks to it)."""
    return copy.deepcopy(base_model)


@pytest.fixture(scope="session")
def adapters(spec: BackboneSpec) -> dict[str, Adapter]:
    return {case: make_case(case, spec, seed=i + 1) for i, case in enumerate(CASES)}


@pytest.fixture
def features() -> torch.Tensor:
    return torch.randn(6, N_MELS, FRAMES, generator=torch.Generator().manual_seed(7))


