"""Magnitude bounds for every kind's canonical form: the low-rank factors, the gates, the router, alpha."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from splitasr.adapters import BackboneSpec, adapter_to_bytes, load_adapter
from splitasr.adapters.bounds import MAX_ABS_VALUE, MAX_FACTOR_NORM
from splitasr.errors import InvalidAdapter
from tests.adapter_factory import make_case


def set_norm(tensor: torch.Tensor, norm: float) -> torch.Tensor:
    return tensor * (norm / float(tensor.norm()))


def edited(adapter, suffix: str, norm: float):
    """``adapter`` with every tensor named ``suffix`` scaled to Frobenius norm ``norm`` (per expert)."""
    tensors = {}
    for module, group in adapter.tensors.items():
        group = dict(group)
        if suffix in group:
            t = group[suffix]
            group[suffix] = torch.stack([set_norm(e, norm) for e in t]) if t.dim() == 3 else set_norm(t, norm)
        tensors[module] = group
    return replace(adapter, tensors=tensors)


def small(adapter):
    """Every module factor at norm 1, so that one edit alone decides."""
    for suffix in ("lora_A", "lora_B", "glora_G", "glora_C"):
        adapter = edited(adapter, suffix, 1.0)
    return adapter


def reload(adapter, spec: BackboneSpec):
    return load_adapter(adapter_to_bytes(adapter), expected_backbone=spec)


@pytest.mark.parametrize("case, suffix, norm, words", [
    ("lora", "lora_A", MAX_FACTOR_NORM * 1.1, "‖A‖"),
    ("lora", "lora_B", MAX_FACTOR_NORM * 1.1, "‖B‖·‖A‖"),
    ("glora-lowrank", "glora_G", MAX_FACTOR_NORM * 1.1, "‖G‖"),
    ("glora-output", "glora_C", MAX_FACTOR_NORM * 1.1, "‖C‖·‖A‖"),
    ("saml", "lora_A", MAX_FACTOR_NORM * 1.1, "‖A‖"),
])
def test_each_factor_is_bounded(spec: BackboneSpec, case: str, suffix: str, norm: float, words: str) -> None:
    adapter = small(make_case(case, spec))
    assert reload(adapter, spec).kind == adapter.kind
    with pytest.raises(InvalidAdapter, match=words.replace("‖", ".")):
        reload(edited(adapter, suffix, norm), spec)


def test_the_gain_counts_alpha(spec: BackboneSpec) -> None:
    adapter = small(make_case("lora", spec))  # ‖B‖·‖A‖ = 1
    inside = replace(adapter, config=replace(adapter.config, alpha=adapter.config.r * MAX_FACTOR_NORM * 0.9))
    assert reload(inside, spec).config.scale == pytest.approx(MAX_FACTOR_NORM * 0.9)
    over = replace(adapter, config=replace(adapter.config, alpha=adapter.config.r * MAX_FACTOR_NORM * 1.1))
    with pytest.raises(InvalidAdapter, match="gain"):
        reload(over, spec)
    huge = replace(adapter, config=replace(adapter.config, alpha=1e30))
    with pytest.raises(InvalidAdapter, match="alpha 1e.30"):
        reload(huge, spec)


def test_router_values_are_bounded(spec: BackboneSpec) -> None:
    adapter = small(make_case("saml", spec))
    router = dict(adapter.global_tensors)
    router["router.weight"] = torch.full_like(router["router.weight"], MAX_ABS_VALUE * 2)
    with pytest.raises(InvalidAdapter, match="router.weight"):
        reload(replace(adapter, global_tensors=router), spec)
