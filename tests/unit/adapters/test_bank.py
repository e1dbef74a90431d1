"""The slot bank on a full (tiny) Whisper: mixed batches, beam expansion, slot management."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import GenerationMixin

from splitasr.adapters import (
    Adapter,
    AdapterBank,
    AdapterLimits,
    BackboneSpec,
    attach_bank,
    bank_context,
    bank_layers,
    clear_slot,
    detach_bank,
    export_slot,
    get_kind,
    load_into_slot,
    new_adapter,
    slot_occupant,
    utterance_embedding,
)
from splitasr.errors import InvalidAdapter, InvalidInput
from tests.adapter_factory import CASES, LIMITS, ReferenceModel

CASE_NAMES = list(CASES)


@pytest.fixture
def served(model: nn.Module, adapters: dict[str, Adapter]) -> nn.Module:
    """The tiny backbone with a bank on every target and one slot per kind case (slot i+1 = case i)."""
    attach_bank(model, "all", num_slots=len(CASES) + 1, limits=LIMITS)
    for slot, case in enumerate(CASE_NAMES, start=1):
        load_into_slot(model, slot, adapters[case])
    return model


def decoder_ids(rows: int) -> torch.Tensor:
    return torch.tensor([[1, 5, 9, 17, 3]] * rows)


def test_attach_keeps_names_and_fingerprint(model: nn.Module, spec: BackboneSpec) -> None:
    names = attach_bank(model, "attn,ffn", num_slots=2, limits=LIMITS)
    assert len(names) == 16 + 8
    bank = model.get_submodule("model.encoder.layers.0.self_attn.q_proj")
    assert isinstance(bank, AdapterBank)
    assert "model.encoder.layers.0.self_attn.q_proj.base_layer.weight" in model.state_dict()
    assert BackboneSpec.from_model("tiny-random", model) == spec
    detach_bank(model)
    assert isinstance(model.get_submodule("model.encoder.layers.0.self_attn.q_proj"), nn.Linear)
    assert not bank_layers(model)
    assert BackboneSpec.from_model("tiny-random", model) == spec


def test_no_context_and_slot_zero_give_base_output(served: nn.Module, base_model: nn.Module, features: torch.Tensor) -> None:
    ids = decoder_ids(features.shape[0])
    with torch.no_grad():
        expected = base_model(input_features=features, decoder_input_ids=ids).logits
        assert torch.equal(served(input_features=features, decoder_input_ids=ids).logits, expected)
        with bank_context(served, slots=[0] * features.shape[0]):
            assert torch.equal(served(input_features=features, decoder_input_ids=ids).logits, expected)


def test_mixed_batch_equals_each_row_alone(served: nn.Module, base_model: nn.Module, adapters: dict[str, Adapter],
                                           features: torch.Tensor) -> None:
    """Rows on slot 0, lora, glora (both gates), saml (with and without top-k) in ONE forward pass."""
    slots = list(range(len(CASES) + 1))  # 0, then one row per case
    feats = features[: len(slots)]
    emb = utterance_embedding(feats)
    with torch.no_grad(), bank_context(served, slots=slots, utterance_embedding=emb):
        batched = served(input_features=feats, decoder_input_ids=decoder_ids(len(slots))).logits
    for row, slot in enumerate(slots):
        reference = ReferenceModel(base_model, adapters[CASE_NAMES[slot - 1]] if slot else None)
        with torch.no_grad():
            alone = reference(emb[row : row + 1], input_features=feats[row : row + 1],
                              decoder_input_ids=decoder_ids(1)).logits
        torch.testing.assert_close(batched[row : row + 1], alone, atol=1e-5, rtol=1e-5)
        if slot:  # the adapter must actually change the output
            with torch.no_grad():
                plain = base_model(input_features=feats[row : row + 1], decoder_input_ids=decoder_ids(1)).logits
            assert (alone - plain).abs().max() > 1e-3


def test_beam_rows_expand_slots(served: nn.Module, features: torch.Tensor) -> None:
    slots = [4, 0, 1]
    feats, beams = features[:3], 3
    emb = utterance_embedding(feats)
    with torch.no_grad(), bank_context(served, slots=slots, utterance_embedding=emb):
        plain = served(input_features=feats, decoder_input_ids=decoder_ids(3)).logits
        expanded = served(input_features=feats.repeat_interleave(beams, 0),
                          decoder_input_ids=decoder_ids(3 * beams)).logits
        torch.testing.assert_close(expanded, plain.repeat_interleave(beams, 0), atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="must be a multiple of the utterances"):
            served(input_features=feats[:2], decoder_input_ids=decoder_ids(2))


def test_beam_search_generate_matches_rows_alone(served: nn.Module, base_model: nn.Module,
                                                 adapters: dict[str, Adapter], features: torch.Tensor) -> None:
    slots = [2, 0, 4]
    feats = features[:3]
    emb = utterance_embedding(feats)
    kwargs = {"num_beams": 2, "max_new_tokens": 4, "do_sample": False}
    with torch.no_grad(), bank_context(served, slots=slots, utterance_embedding=emb):
        batched = GenerationMixin.generate(served, input_features=feats, decoder_input_ids=decoder_ids(3)[:, :1],
                                           **kwargs)
    for row, slot in enumerate(slots):
        reference = ReferenceModel(base_model, adapters[CASE_NAMES[slot - 1]] if slot else None)
        reference.embedding = emb[row : row + 1]
        with torch.no_grad():
            alone = GenerationMixin.generate(reference.model, input_features=feats[row : row + 1],
                                             decoder_input_ids=decoder_ids(1)[:, :1], **kwargs)
        assert torch.equal(batched[row], alone[0])


def test_context_errors(served: nn.Module, features: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="pass utterance_embedding"):
        bank_context(served, slots=[4]).__enter__()
    with pytest.raises(ValueError, match="out of range"):
        bank_context(served, slots=[99]).__enter__()
    with pytest.raises(ValueError, match="must be \\[1, 16\\]"):
        bank_context(served, slots=[4], utterance_embedding=torch.zeros(1, 3)).__enter__()
    clear_slot(served, 1)
    with pytest.raises(ValueError, match="slot 1 is empty"):
        bank_context(served, slots=[1]).__enter__()
    with bank_context(served, slots=[0]), pytest.raises(RuntimeError, match="already active"):
        bank_context(served, slots=[0]).__enter__()
    with pytest.raises(ValueError, match="no adapter bank"):
        bank_context(nn.Linear(2, 2), slots=[0]).__enter__()


def test_load_clear_export_round_trip(served: nn.Module, adapters: dict[str, Adapter]) -> None:
    for slot, case in enumerate(CASE_NAMES, start=1):
        exported = export_slot(served, slot)
        original = adapters[case]
        assert exported.kind == original.kind and exported.config == original.config
        assert exported.targets == original.targets
        for module, group in original.tensors.items():
            for suffix, tensor in group.items():
                assert torch.equal(exported.tensors[module][suffix], tensor), (case, module, suffix)
        for name, tensor in original.global_tensors.items():
            assert torch.equal(exported.global_tensors[name], tensor)
    occupant = slot_occupant(served, 2)
    assert occupant is not None and occupant.kind == "glora"
    clear_slot(served, 2)
    assert slot_occupant(served, 2) is None
    for layer in bank_layers(served).values():
        assert 2 not in layer.loaded_slots
        assert torch.count_nonzero(layer.lora_A[2]) == 0 and torch.count_nonzero(layer.lora_A[0]) == 0
    with pytest.raises(ValueError, match="slot must be in 1.."):
        load_into_slot(served, 0, adapters["lora"])


def test_load_rejects_what_the_bank_cannot_hold(model: nn.Module, spec: BackboneSpec,
                                                adapters: dict[str, Adapter]) -> None:
    attach_bank(model, "attn", num_slots=2, limits=AdapterLimits(max_rank=3, max_experts=2), kinds=["lora"])
    with pytest.raises(InvalidAdapter, match="rank 4 exceeds the bank's max_rank 3"):
        load_into_slot(model, 1, adapters["lora"])
    small = new_adapter("lora", get_kind("lora").make_config(r=2), ["model.decoder.layers.0.fc1"], spec)
    with pytest.raises(InvalidAdapter, match="targets \\['model.decoder.layers.0.fc1'\\]"):
        load_into_slot(model, 1, small)
    glora = new_adapter("glora", get_kind("glora").make_config(r=2),
                        ["model.decoder.layers.0.self_attn.q_proj"], spec)
    with pytest.raises(InvalidAdapter, match="lowrank_gate"):
        load_into_slot(model, 1, glora)
    broken = copy.deepcopy(small)
    broken.tensors = {"model.decoder.layers.0.self_attn.q_proj": {"lora_A": torch.zeros(2, 5),
                                                                  "lora_B": torch.zeros(64, 2)}}
    with pytest.raises(InvalidAdapter, match="has shape \\(1, 2, 5\\)"):
        load_into_slot(model, 1, broken)
    assert slot_occupant(model, 1) is None


def test_tied_projection_is_never_a_target(model: nn.Module) -> None:
    with pytest.raises(InvalidInput, match="'proj_out' matches no linear layer"):
        attach_bank(model, "proj_out", num_slots=1, limits=LIMITS)
