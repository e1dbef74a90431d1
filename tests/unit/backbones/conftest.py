"""Fixtures for backbone tests: a tiny random Whisper and a tiny random Conformer/CTC directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

N_MELS = 8
FRAMES = 64


def tiny_whisper(seed: int = 0) -> WhisperForConditionalGeneration:
    torch.manual_seed(seed)
    config = WhisperConfig(
        vocab_size=100, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=N_MELS,
        max_source_positions=FRAMES // 2, max_target_positions=64, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, decoder_start_token_id=1, init_std=0.05,
    )
    return WhisperForConditionalGeneration(config).eval().requires_grad_(False)


@pytest.fixture(scope="session")
def ctc_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from splitasr.backbones.ctc import write_random_ctc_model

    return write_random_ctc_model(tmp_path_factory.mktemp("ctc") / "random-conformer", seed=0)


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """Tiny models: one intra-op thread is as fast, and kinder to a shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
