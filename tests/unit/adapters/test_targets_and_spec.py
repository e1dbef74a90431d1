"""Target presets, the backbone fingerprint, and the SAML router input."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import WhisperForConditionalGeneration

from splitasr.adapters import BackboneSpec, resolve_targets, utterance_embedding
from splitasr.errors import InvalidInput
from tests.adapter_factory import tiny_config


@pytest.mark.parametrize(
    ("spec_text", "count", "sample"),
    [
        ("attn", 16, "model.decoder.layers.1.self_attn.out_proj"),
        ("cross", 8, "model.decoder.layers.0.encoder_attn.k_proj"),
        ("ffn", 8, "model.encoder.layers.1.fc2"),
        ("qv", 8, "model.encoder.layers.0.self_attn.v_proj"),
        ("all", 32, "model.decoder.layers.1.encoder_attn.q_proj"),
        ("encoder", 12, "model.encoder.layers.0.fc1"),
        ("decoder", 20, "model.decoder.layers.0.encoder_attn.out_proj"),
        ("cross, ffn", 16, "model.decoder.layers.1.fc1"),
        ("model.decoder.layers.*.fc1", 2, "model.decoder.layers.0.fc1"),
    ],
)
def test_presets(spec_text: str, count: int, sample: str, spec: BackboneSpec) -> None:
    names = resolve_targets(spec_text, spec.linear_shapes)
    assert len(names) == count and sample in names and "proj_out" not in names
    assert names == sorted(names)


def test_bad_target_specs(spec: BackboneSpec) -> None:
    with pytest.raises(InvalidInput, match="'atn' matches no linear layer.*presets"):
        resolve_targets("atn", spec.linear_shapes)
    with pytest.raises(InvalidInput, match="empty"):
        resolve_targets(" , ", spec.linear_shapes)


def test_fingerprint_tracks_architecture_and_weights(base_model: nn.Module, spec: BackboneSpec) -> None:
    assert BackboneSpec.from_model("renamed", copy.deepcopy(base_model)).fingerprint == spec.fingerprint
    assert BackboneSpec.from_model("half", copy.deepcopy(base_model).half()).fingerprint == spec.fingerprint
    torch.manual_seed(5)
    other_weights = WhisperForConditionalGeneration(tiny_config())
    assert BackboneSpec.from_model("x", other_weights).fingerprint != spec.fingerprint
    torch.manual_seed(0)
    other_arch = WhisperForConditionalGeneration(tiny_config(decoder_layers=3))
    assert BackboneSpec.from_model("x", other_arch).fingerprint != spec.fingerprint
    assert spec.linear_shapes["model.encoder.layers.0.fc1"] == (128, 64)
    assert spec.router_dim == 16


def test_utterance_embedding_ignores_padding() -> None:
    gen = torch.Generator().manual_seed(0)
    speech = torch.randn(1, 8, 40, generator=gen)
    padded = torch.cat([speech, torch.full((1, 8, 24), -1.5)], dim=-1)
    emb = utterance_embedding(padded, num_frames=torch.tensor([40]))
    assert emb.shape == (1, 16)
    torch.testing.assert_close(emb[0, :8], speech[0].mean(-1))
    torch.testing.assert_close(emb[0, 8:], speech[0].std(-1, unbiased=False))
    assert not torch.allclose(utterance_embedding(padded), emb)
