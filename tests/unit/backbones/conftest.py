"""Fixtures for backbone tests: a tiny random Whisper and a tiny random Conformer/CTC directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import WhisperForConditionalGeneration

from tests.adapter_factory import tiny_whisper as random_whisper


def tiny_whisper(seed: int = 0) -> WhisperForConditionalGeneration:
    return random_whisper(seed, init_std=0.05).requires_grad_(False)


@pytest.fixture(scope="session")
def ctc_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from splitasr.backbones.ctc import write_random_ctc_model

    return write_random_ctc_model(tmp_path_factory.mktemp("ctc") / "random-conformer", seed=0)


