"""Slot operations on an attached bank: load, clear, export, and choose what trains.

Loading copies an adapter's tensors into preallocated slot storage (no reallocation), so the slot
pool (:mod:`.pool`) can swap adapters in and out while the model stays in place. Nothing may load into
a slot that an in-flight forward uses: the pool runs only on the thread that runs the model, and never
evicts a slot a live request has pinned.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InvalidAdapter
from .adapter import Adapter
from .bank import bank_layers
from .context import BankState, get_state
from .kinds import (
    FAMILIES,
    FAMILY_LOWRANK,
    FAMILY_LOWRANK_GATE,
    FAMILY_OUTPUT_GATE,
    FAMILY_ROUTER,
    KindConfig,
    SlotHeader,
    get_kind,
)


@dataclass(frozen=True)
class SlotInfo:
    """What occupies a slot (kept to export the slot as an :class:`Adapter` again)."""

    kind: str
    config: KindConfig
    targets: tuple[str, ...]
    backbone_name: str
    backbone_fingerprint: str
    created_at: str
    creator: str


def _check_slot(state: BankState, slot: int) -> None:
    if isinstance(slot, bool) or not isinstance(slot, int) or not 1 <= slot <= state.num_slots:
        raise ValueError(f"slot must be in 1..{state.num_slots} (slot 0 is the backbone), got {slot!r}")


def _check_fits(state: BankState, adapter: Adapter, header: SlotHeader, layers: Collection[str]) -> None:
    config = adapter.config
    if config.r > state.max_rank:
        raise InvalidAdapter(f"adapter rank {config.r} exceeds the bank's max_rank {state.max_rank}")
    if header.num_experts > state.max_experts:
        raise InvalidAdapter(f"adapter has {header.num_experts} experts but the bank holds at most {state.max_experts}")
    needed = {FAMILY_LOWRANK_GATE: header.lowrank_gate, FAMILY_OUTPUT_GATE: header.output_gate,
              FAMILY_ROUTER: header.num_experts > 1}
    for family, used in needed.items():
        if used and family not in state.families:
            raise InvalidAdapter(f"{adapter.kind} adapters need the bank family {family!r}, which this bank lacks")
    if header.router_weight is not None and tuple(header.router_weight.shape) != (
        header.num_experts, state.router_dim
    ):
        raise InvalidAdapter(
            f"router weight has shape {tuple(header.router_weight.shape)}, the bank expects "
            f"({header.num_experts}, {state.router_dim})"
        )
    unknown = sorted(set(adapter.tensors) - set(layers))
    if unknown:
        raise InvalidAdapter(f"adapter targets {unknown} but the bank only adapts {len(layers)} other module(s)")


def load_into_slot(model: nn.Module, slot: int, adapter: Adapter) -> None:
    """Copy ``adapter`` into ``slot`` of the model's bank (replacing what was there)."""
    state = get_state(model)
    _check_slot(state, slot)
    impl = get_kind(adapter.kind)
    header = impl.slot_header(adapter.config, adapter.global_tensors)
    layers = bank_layers(model)
    _check_fits(state, adapter, header, layers)
    impl.check_backbone(adapter.config, state.router_dim)
    canonical = {module: impl.to_slot(adapter.config, tensors) for module, tensors in adapter.tensors.items()}
    for module, layer_slot in canonical.items():
        try:
            layers[module].check_fits(layer_slot)
        except ValueError as exc:
            raise InvalidAdapter(f"module {module!r}: {exc}") from exc
    clear_slot(model, slot)  # only after every check: a failed load leaves the slot as it was
    with torch.no_grad():
        for module, layer_slot in canonical.items():
            layers[module].write_slot(slot, layer_slot)
        if header.router_weight is not None and header.router_bias is not None:
            assert state.router_weight is not None and state.router_bias is not None
            state.router_weight[slot, : header.num_experts].copy_(header.router_weight)
            state.router_bias[slot, : header.num_experts].copy_(header.router_bias)
    # The copies live in the bank; keep only plain settings in the header.
    state.headers[slot] = SlotHeader(
        scale=header.scale, num_experts=header.num_experts, top_k=header.top_k,
        lowrank_gate=header.lowrank_gate, output_gate=header.output_gate,
    )
    state.infos[slot] = SlotInfo(
        kind=adapter.kind, config=adapter.config, targets=tuple(adapter.targets),
        backbone_name=adapter.backbone_name, backbone_fingerprint=adapter.backbone_fingerprint,
        created_at=adapter.created_at, creator=adapter.creator,
    )


def clear_slot(model: nn.Module, slot: int) -> None:
    """Empty ``slot``: zero its tensors in every layer and forget its header."""
    state = get_state(model)
    _check_slot(state, slot)
    with torch.no_grad():
        for layer in bank_layers(model).values():
            layer.zero_slot(slot)
        if state.router_weight is not None and state.router_bias is not None:
            state.router_weight[slot].zero_()
            state.router_bias[slot].zero_()
    state.headers[slot] = None
    state.infos[slot] = None


def slot_occupant(model: nn.Module, slot: int) -> SlotInfo | None:
    """What is loaded in ``slot`` (None when empty)."""
    state = get_state(model)
    _check_slot(state, slot)
    info = state.infos[slot]
    assert info is None or isinstance(info, SlotInfo)
    return info


def export_slot(model: nn.Module, slot: int) -> Adapter:
    """The adapter in ``slot`` as an :class:`Adapter` (copies; e.g. after training)."""
    state = get_state(model)
    info = slot_occupant(model, slot)
    header = state.headers[slot]
    if info is None or header is None:
        raise ValueError(f"slot {slot} is empty")
    impl = get_kind(info.kind)
    layers = bank_layers(model)
    tensors = {
        module: {k: v.contiguous() for k, v in impl.from_slot(
            info.config, layers[module].read_slot(slot, header.num_experts, info.config.r)).items()}
        for module in info.targets
    }
    full_header = header
    if header.num_experts > 1 and state.router_weight is not None and state.router_bias is not None:
        full_header = SlotHeader(
            scale=header.scale, num_experts=header.num_experts, top_k=header.top_k,
            router_weight=state.router_weight[slot, : header.num_experts].detach().clone(),
            router_bias=state.router_bias[slot, : header.num_experts].detach().clone(),
        )
    return Adapter(
        kind=info.kind, config=info.config, tensors=tensors,
        global_tensors=impl.globals_from_header(info.config, full_header),
        backbone_name=info.backbone_name, backbone_fingerprint=info.backbone_fingerprint,
        created_at=info.created_at, creator=info.creator,
    )


def stage_families(kind: str, stage: str) -> frozenset[str]:
    """The bank families a kind trains in ``stage`` (e.g. ``("saml", "adapt")`` → router only)."""
    stages = get_kind(kind).stages
    if stage not in stages:
        raise ValueError(f"kind {kind!r} has no training stage {stage!r}; stages: {sorted(stages)}")
    return stages[stage]


def set_trainable(model: nn.Module, families: Collection[str]) -> list[nn.Parameter]:
    """Freeze the whole model except the bank tensors of ``families``; returns those parameters.

    Only bank tensors train (the backbone stays frozen); pass the result to the optimizer. Families
    that no loaded slot uses (e.g. the output gate while training a low-rank-gate GLoRA) stay frozen.
    The tensors include slot 0 and the zero padding, which get exactly zero gradient.
    """
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown families {sorted(unknown)}; known: {list(FAMILIES)}")
    state = get_state(model)
    headers = [h for h in state.headers if h is not None]
    used = {FAMILY_LOWRANK} if headers else set()
    used |= {FAMILY_LOWRANK_GATE} if any(h.lowrank_gate for h in headers) else set()
    used |= {FAMILY_OUTPUT_GATE} if any(h.output_gate for h in headers) else set()
    used |= {FAMILY_ROUTER} if any(h.num_experts > 1 for h in headers) else set()
    families = set(families) & used
    for param in model.parameters():
        param.requires_grad_(False)
    chosen: list[nn.Parameter] = []
    per_family = {
        FAMILY_LOWRANK: ("lora_A", "lora_B"), FAMILY_LOWRANK_GATE: ("gate_G",), FAMILY_OUTPUT_GATE: ("gate_C",)
    }
    for layer in bank_layers(model).values():
        for family in families:
            for attr in per_family.get(family, ()):
                param = getattr(layer, attr)
                if param is not None:
                    chosen.append(param)
    if FAMILY_ROUTER in families and state.router_weight is not None and state.router_bias is not None:
        chosen += [state.router_weight, state.router_bias]
    for param in chosen:
        param.requires_grad_(True)
    return chosen
