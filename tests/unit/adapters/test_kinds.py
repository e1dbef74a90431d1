"""Each kind: config checks, zero initial update, and the bank's layer math against the plain reference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from splitasr.adapters import (
    BackboneSpec,
    attach_bank,
    bank_context,
    get_kind,
    load_into_slot,
    new_adapter,
    registered_kinds,
)
from splitasr.errors import InvalidAdapter
from tests.adapter_factory import CASES, LIMITS, ROUTER_DIM, lora_delta_w, randomize


class OneLayer(nn.Module):
    """A single linear layer with different in/out sizes, as a stand-in backbone."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.proj = nn.Linear(24, 40)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def one_layer_spec(layer: OneLayer) -> BackboneSpec:
    return BackboneSpec(name="one-layer", fingerprint="f" * 64, linear_shapes={"proj": (40, 24)}, router_dim=ROUTER_DIM)


def test_builtin_kinds_registered() -> None:
    assert {"lora", "glora", "saml"} <= set(registered_kinds())
    with pytest.raises(InvalidAdapter, match="unknown adapter kind 'dora'"):
        get_kind("dora")


@pytest.mark.parametrize(
    ("kind", "hyper", "message"),
    [
        ("lora", {"r": 0}, "rank r must be an integer >= 1"),
        ("lora", {"r": 2.5}, "rank r must be an integer"),
        ("lora", {"alpha": float("nan")}, "alpha must be a finite number"),
        ("lora", {"alpha": -1}, "alpha must be a finite number > 0"),
        ("lora", {"rank": 4}, "unknown hyper-parameter"),
        ("glora", {"gate": "middle"}, "gate must be one of"),
        ("saml", {"experts": 1}, "experts must be in 2..64"),
        ("saml", {"experts": 65}, "experts must be in 2..64"),
        ("saml", {"experts": 4, "top_k": 5}, "top_k must be null or in 1..experts"),
        ("saml", {"experts": 4, "top_k": 0}, "top_k must be null or in 1..experts"),
        ("saml", {"router_input": "hidden"}, "router_input must be"),
    ],
)
def test_config_checks(kind: str, hyper: dict, message: str) -> None:
    with pytest.raises(InvalidAdapter, match=message):
        get_kind(kind).make_config(**hyper)


@pytest.mark.parametrize("case", list(CASES))
def test_initial_update_is_zero(case: str) -> None:
    kind, hyper, _ = CASES[case]
    layer = OneLayer()
    impl = get_kind(kind)
    adapter = new_adapter(kind, impl.make_config(**hyper), ["proj"], one_layer_spec(layer), seed=5)
    x = torch.randn(3, 7, 24)
    mix = impl.reference_mix(adapter.config, adapter.global_tensors, torch.randn(3, ROUTER_DIM))
    delta = impl.reference_delta(adapter.config, adapter.tensors["proj"], x, mix)
    assert delta.shape == (3, 7, 40)
    assert torch.count_nonzero(delta) == 0


@pytest.mark.parametrize("shape", [(7, 5, 24), (7, 24)], ids=["3d", "2d"])
def test_bank_layer_matches_reference_per_row(shape: tuple[int, ...]) -> None:
    """Rows on different slots (every kind, slot 0 included) each equal base + their own reference delta."""
    layer = OneLayer()
    spec = one_layer_spec(layer)
    base = nn.Linear(24, 40)
    base.load_state_dict(layer.proj.state_dict())
    attach_bank(layer, "proj", num_slots=len(CASES), limits=LIMITS, router_dim=ROUTER_DIM)
    adapters = {}
    for slot, case in enumerate(CASES, start=1):
        kind, hyper, _ = CASES[case]
        config = get_kind(kind).make_config(**hyper)
        adapters[slot] = randomize(new_adapter(kind, config, ["proj"], spec, seed=slot), seed=slot)
        load_into_slot(layer, slot, adapters[slot])
    slots = [0, 1, 2, 3, 4, 5, 2]
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    emb = torch.randn(len(slots), ROUTER_DIM, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), bank_context(layer, slots=slots, utterance_embedding=emb):
        out = layer(x)
    with torch.no_grad():
        base_full = base(x)  # the same GEMM as inside the bank: slot-0 rows must match it bit for bit
        for row, slot in enumerate(slots):
            expected = base_full[row : row + 1]
            if slot:
                a = adapters[slot]
                mix = a.kind_impl.reference_mix(a.config, a.global_tensors, emb[row : row + 1])
                expected = expected + a.kind_impl.reference_delta(a.config, a.tensors["proj"], x[row : row + 1], mix)
            if slot == 0:
                assert torch.equal(out[row : row + 1], expected), "slot 0 must give exactly the base output"
            else:
                torch.testing.assert_close(out[row : row + 1], expected, atol=1e-5, rtol=1e-5)


def test_saml_top_k_reference_keeps_k_experts() -> None:
    impl = get_kind("saml")
    config = impl.make_config(r=2, experts=4, top_k=2, router_dim=ROUTER_DIM)
    adapter = randomize(new_adapter("saml", config, ["proj"], one_layer_spec(OneLayer())), seed=3)
    mix = impl.reference_mix(config, adapter.global_tensors, torch.randn(5, ROUTER_DIM))
    assert mix is not None
    assert ((mix > 0).sum(-1) == 2).all()
    torch.testing.assert_close(mix.sum(-1), torch.ones(5))


def test_lora_reference_is_a_weight_update() -> None:
    """LoRA's reference delta is linear in x: the same as the layer with W0 + s·B·A."""
    layer = OneLayer()
    spec = one_layer_spec(layer)
    lora = randomize(new_adapter("lora", get_kind("lora").make_config(r=4), ["proj"], spec), seed=4)
    delta_w = lora_delta_w(lora.config, lora.tensors["proj"])
    x = torch.randn(3, 24)
    merged = x @ (layer.proj.weight + delta_w).T + layer.proj.bias
    expected = layer.proj(x) + lora.kind_impl.reference_delta(lora.config, lora.tensors["proj"], x)
    torch.testing.assert_close(merged, expected, atol=1e-5, rtol=1e-5)


def test_parameter_counts_per_kind() -> None:
    """GLoRA's gate costs r·in (lowrank) or out·r (output) over LoRA at equal rank."""
    spec = one_layer_spec(OneLayer())
    counts = {}
    for name, hyper in {"lora": {}, "glora": {"gate": "lowrank"}, "glora-out": {"gate": "output"}}.items():
        kind = name.split("-")[0]
        counts[name] = new_adapter(kind, get_kind(kind).make_config(r=4, **hyper), ["proj"], spec).num_parameters()
    assert counts["lora"] == 4 * (24 + 40)
    assert counts["glora"] - counts["lora"] == 4 * 24
    assert counts["glora-out"] - counts["lora"] == 40 * 4
