"""int8 / NF4 backbones: the layers they replace, the fingerprint they keep, and every adapter kind
training and round-tripping on top of them."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from splitasr.adapters import (
    AdapterLimits,
    BackboneSpec,
    adapter_to_bytes,
    attach_bank,
    bank_context,
    export_slot,
    get_kind,
    load_adapter,
    load_into_slot,
    new_adapter,
    resolve_targets,
    set_trainable,
    stage_families,
    utterance_embedding,
)
from splitasr.backbones.quantize import Int8Linear, quantize_model, weight_bytes
from splitasr.errors import InvalidAdapter, InvalidInput
from tests.adapter_factory import FRAMES, N_MELS

from .conftest import tiny_whisper

bnb = pytest.importorskip("bitsandbytes")

KINDS = {
    "lora": ("lora", {"r": 4, "alpha": 8.0}, "attn"),
    "glora-lowrank": ("glora", {"r": 4, "alpha": 8.0, "gate": "lowrank"}, "cross,ffn"),
    "glora-output": ("glora", {"r": 3, "alpha": 6.0, "gate": "output"}, "all"),
    "saml": ("saml", {"r": 2, "alpha": 4.0, "experts": 3, "router_dim": 2 * N_MELS}, "decoder"),
}
LIMITS = AdapterLimits(max_rank=4, max_experts=3)


@pytest.fixture(scope="module")
def fp32() -> nn.Module:
    return tiny_whisper(0)


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    feats = torch.randn(4, N_MELS, FRAMES, generator=gen)
    ids = torch.randint(3, 100, (4, 6), generator=gen)
    ids[:, 0] = 1
    return feats, ids, utterance_embedding(feats)


def quantized(model: nn.Module, mode: str) -> nn.Module:
    copy_ = copy.deepcopy(model)
    quantize_model(copy_, mode)
    return copy_


@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_quantized_backbone_keeps_fingerprint_and_output(fp32, batch, mode):
    model = quantized(fp32, mode)
    layer_type = Int8Linear if mode == "int8" else bnb.nn.Linear4bit
    kinds = {type(m) for n, m in model.named_modules() if n.endswith(("q_proj", "fc1", "fc2", "out_proj"))}
    assert kinds == {layer_type}
    embed = model.model.decoder.embed_tokens.weight
    if mode == "int8":  # an untied int8 copy of the head; the embedding keeps its fp32 table
        assert type(model.proj_out) is Int8Linear
        assert embed.dtype == torch.float32
        assert torch.equal(embed, fp32.model.decoder.embed_tokens.weight)
        head_error = (model.proj_out.dequantized_weight() - embed).norm() / embed.norm()
        assert 0 < head_error.item() < 0.02
    else:  # tied to the token embedding: kept
        assert type(model.proj_out) is nn.Linear and model.proj_out.weight is embed
    spec, spec_fp32 = BackboneSpec.from_model("t", model), BackboneSpec.from_model("t", fp32)
    assert spec.fingerprint == spec_fp32.fingerprint
    assert spec.linear_shapes == spec_fp32.linear_shapes
    assert weight_bytes(model) < 0.75 * weight_bytes(fp32)
    feats, ids, _ = batch
    ref = fp32(input_features=feats, decoder_input_ids=ids).logits
    out = model(input_features=feats, decoder_input_ids=ids).logits
    error = ((out - ref).norm() / ref.norm()).item()
    assert error < (0.05 if mode == "int8" else 0.2), error
    # ... but it is really quantized: not the fp32 weights
    assert error > 1e-5


def test_unknown_quantization_is_rejected(fp32):
    with pytest.raises(InvalidInput, match="nf4"):
        quantize_model(copy.deepcopy(fp32), "fp8")


def _loss(model: nn.Module, batch, slot: int = 1) -> torch.Tensor:
    feats, ids, emb = batch
    with bank_context(model, slots=[slot] * len(ids), utterance_embedding=emb):
        logits = model(input_features=feats, decoder_input_ids=ids[:, :-1]).logits
    return F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())


@pytest.mark.parametrize("mode", ["nf4", "int8"])
@pytest.mark.parametrize("case", sorted(KINDS))
def test_every_kind_trains_and_round_trips_on_a_quantized_backbone(fp32, batch, mode, case):
    kind, hyper, targets = KINDS[case]
    model = quantized(fp32, mode)
    spec = BackboneSpec.from_model("tiny-random", model)
    adapter = new_adapter(kind, get_kind(kind).make_config(**hyper), resolve_targets(targets, spec.linear_shapes),
                          spec, seed=1)
    attach_bank(model, adapter.targets, num_slots=1, limits=LIMITS, kinds=[kind])
    load_into_slot(model, 1, adapter)
    params = set_trainable(model, stage_families(kind, next(iter(get_kind(kind).stages))))
    optimizer = torch.optim.Adam(params, lr=2e-2)
    losses = []
    for _ in range(6):
        loss = _loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1e-3, losses  # gradients reached the adapter through quantized layers
    trained = export_slot(model, 1)
    with torch.no_grad():
        expected = _loss(model, batch).item()
    # the file loads against the fp32 backbone's spec (same fingerprint) and gives the same loss on a fresh
    # quantized copy
    reloaded = load_adapter(adapter_to_bytes(trained), expected_backbone=BackboneSpec.from_model("fp32", fp32),
                            limits=LIMITS)
    fresh = quantized(fp32, mode)
    attach_bank(fresh, reloaded.targets, num_slots=2, limits=LIMITS)
    load_into_slot(fresh, 2, reloaded)
    with torch.no_grad():
        assert _loss(fresh, batch, slot=2).item() == pytest.approx(expected, rel=1e-5)


def test_rows_with_different_adapters_on_nf4_equal_each_alone(fp32, batch):
    model = quantized(fp32, "nf4")
    spec = BackboneSpec.from_model("t", model)
    attach_bank(model, "all", num_slots=3, limits=LIMITS)
    for slot, case in enumerate(("lora", "glora-output", "saml"), start=1):
        kind, hyper, targets = KINDS[case]
        adapter = new_adapter(kind, get_kind(kind).make_config(**hyper),
                              resolve_targets(targets, spec.linear_shapes), spec, seed=slot)
        for group in adapter.tensors.values():
            for name, tensor in group.items():
                group[name] = torch.randn(tensor.shape, generator=torch.Generator().manual_seed(slot)) * 0.1
        load_into_slot(model, slot, adapter)
    feats, ids, emb = batch
    slots = [0, 1, 2, 3]
    with torch.no_grad():
        with bank_context(model, slots=slots, utterance_embedding=emb):
            mixed = model(input_features=feats, decoder_input_ids=ids).logits
        for row, slot in enumerate(slots):
            with bank_context(model, slots=[slot], utterance_embedding=emb[row : row + 1]):
                alone = model(input_features=feats[row : row + 1], decoder_input_ids=ids[row : row + 1]).logits
            torch.testing.assert_close(mixed[row : row + 1], alone, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(mixed[0], mixed[1])


def test_adapter_for_another_backbone_is_rejected_on_nf4(fp32):
    other = tiny_whisper(1)  # same architecture, other weights
    spec_other = BackboneSpec.from_model("other", other)
    adapter = new_adapter("lora", get_kind("lora").make_config(r=2, alpha=4.0),
                          resolve_targets("attn", spec_other.linear_shapes), spec_other)
    nf4_spec = BackboneSpec.from_model("tiny-random", quantized(fp32, "nf4"))
    with pytest.raises(InvalidAdapter, match="trained for backbone 'other'"):
        load_adapter(adapter_to_bytes(adapter), expected_backbone=nf4_spec)
