"""Training path: one real slot, only adapter tensors get gradients, a few steps lower the loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from splitasr.adapters import (
    AdapterLimits,
    BackboneSpec,
    attach_bank,
    bank_context,
    bank_layers,
    export_slot,
    get_kind,
    load_into_slot,
    new_adapter,
    resolve_targets,
    set_trainable,
    stage_families,
    utterance_embedding,
)
from tests.adapter_factory import CASES


def _setup(model: nn.Module, spec: BackboneSpec, case: str) -> tuple[list[nn.Parameter], str]:
    kind, hyper, target_spec = CASES[case]
    config = get_kind(kind).make_config(**hyper)
    targets = resolve_targets(target_spec, spec.linear_shapes)
    limits = AdapterLimits(max_rank=config.r, max_experts=config.num_experts)
    attach_bank(model, targets, num_slots=1, limits=limits, kinds=[kind])
    load_into_slot(model, 1, new_adapter(kind, config, targets, spec, seed=0))
    stage = next(iter(get_kind(kind).stages))  # "train" or "pretrain"
    return set_trainable(model, stage_families(kind, stage)), kind


def _loss(model: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    with bank_context(model, slots=1, utterance_embedding=utterance_embedding(features)):
        return model(input_features=features, labels=labels).loss


@pytest.mark.parametrize("case", ["lora", "glora-lowrank", "glora-output", "saml-topk"])
def test_training_steps_lower_loss_and_touch_only_adapters(model: nn.Module, spec: BackboneSpec, case: str,
                                                           features: torch.Tensor) -> None:
    params, _ = _setup(model, spec, case)
    model.train()
    trainable = {id(p) for p in params}
    assert all(p.requires_grad == (id(p) in trainable) for p in model.parameters())
    backbone_before = {n: p.detach().clone() for n, p in model.named_parameters() if id(p) not in trainable}
    labels = torch.randint(3, 100, (features.shape[0], 6), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(params, lr=3e-2)
    first = _loss(model, features, labels)
    losses = [first.item()]
    first.backward()
    for p in model.parameters():
        assert (p.grad is not None) == (id(p) in trainable)
    assert any(p.grad.abs().sum() > 0 for p in params if p.grad is not None)
    optimizer.step()
    for _ in range(7):
        optimizer.zero_grad()
        loss = _loss(model, features, labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1e-3, losses
    for name, param in model.named_parameters():
        if id(param) not in trainable:
            assert torch.equal(param, backbone_before[name]), name
    for layer in bank_layers(model).values():  # slot 0 stays "no adapter"
        assert torch.count_nonzero(layer.lora_A[0]) == 0 and torch.count_nonzero(layer.lora_B[0]) == 0
    trained = export_slot(model, 1)
    assert any(torch.count_nonzero(g["lora_B"]) > 0 for g in trained.tensors.values())


def test_saml_adapt_stage_trains_only_the_router(model: nn.Module, spec: BackboneSpec, features: torch.Tensor) -> None:
    _setup(model, spec, "saml")
    params = set_trainable(model, stage_families("saml", "adapt"))
    state = model.splitasr_adapters
    assert [id(p) for p in params] == [id(state.router_weight), id(state.router_bias)]
    labels = torch.randint(3, 100, (features.shape[0], 6), generator=torch.Generator().manual_seed(0))
    _loss(model, features, labels).backward()
    assert state.router_weight.grad is not None
    assert all(layer.lora_A.grad is None for layer in bank_layers(model).values())
    with pytest.raises(ValueError, match="no training stage 'adapt'"):
        stage_families("lora", "adapt")
