"""AdapterBank: a frozen linear layer plus S stacked adapter slots, mixed per batch row.

Each adapted layer keeps every family of the canonical slot form (see
:mod:`splitasr.adapters.kinds`) stacked along a leading slot dimension, with zero padding up to
the bank's maximum rank and expert count::

    lora_A [S+1, E_max, r_max, in]    lora_B [S+1, E_max, out, r_max]
    gate_G [S+1, r_max, in]           gate_C [S+1, out, r_max]          (only if a kind needs them)

Slot 0 is "no adapter" and stays zero. In a forward pass the rows that have an adapter are gathered,
their slot tensors indexed by slot id and the update computed with batched matmuls (the S-LoRA /
Punica idea), then added to the base output of those rows only: rows on slot 0 get exactly the base
output, and a batch without adapters costs one Python check per layer. Zero padding is inert: padded
ranks and experts contribute exactly zero and receive zero gradient.

Training uses the same layer with one real slot (``num_slots=1``) and :func:`slots.set_trainable`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from .adapter import AdapterLimits
from .context import STATE_MODULE_NAME, BankState, RowPlan
from .kinds import (
    FAMILY_LOWRANK_GATE,
    FAMILY_OUTPUT_GATE,
    FAMILY_ROUTER,
    LayerSlot,
    get_kind,
    registered_kinds,
)
from .targets import resolve_targets


class AdapterBank(nn.Module):
    """Wraps ``base_layer`` (frozen ``nn.Linear``) and holds the stacked slot tensors of one layer."""

    is_adapter_bank = True

    def __init__(self, base_layer: nn.Linear, state: BankState) -> None:
        super().__init__()
        self.base_layer = base_layer
        object.__setattr__(self, "_state", state)  # shared, registered once on the model
        weight = base_layer.weight
        dtype = weight.dtype if weight.is_floating_point() else torch.float32
        kw = {"dtype": dtype, "device": weight.device}
        slots, e, r = state.num_slots + 1, state.max_experts, state.max_rank
        in_f, out_f = base_layer.in_features, base_layer.out_features
        self.lora_A = nn.Parameter(torch.zeros(slots, e, r, in_f, **kw), requires_grad=False)
        self.lora_B = nn.Parameter(torch.zeros(slots, e, out_f, r, **kw), requires_grad=False)
        self.gate_G = self._optional(FAMILY_LOWRANK_GATE in state.families, (slots, r, in_f), kw)
        self.gate_C = self._optional(FAMILY_OUTPUT_GATE in state.families, (slots, out_f, r), kw)
        self.loaded_slots: set[int] = set()

    @staticmethod
    def _optional(enabled: bool, shape: tuple[int, ...], kw: dict) -> nn.Parameter | None:
        return nn.Parameter(torch.zeros(*shape, **kw), requires_grad=False) if enabled else None

    # The wrapped layer's attributes, for code that introspects linear layers.
    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def check_fits(self, layer: LayerSlot) -> None:
        """Raise ``ValueError`` unless ``layer`` fits this bank's slot tensors."""
        e, r = layer.A.shape[0], layer.A.shape[1]
        out_f = self.base_layer.out_features
        expected = {
            "A": ((e, r, self.base_layer.in_features), layer.A),
            "B": ((e, out_f, r), layer.B),
            "G": ((r, self.base_layer.in_features), layer.G),
            "C": ((out_f, r), layer.C),
        }
        for name, (shape, value) in expected.items():
            if value is not None and tuple(value.shape) != shape:
                raise ValueError(f"slot tensor {name} has shape {tuple(value.shape)}, this layer expects {shape}")
        if e > self.lora_A.shape[1] or r > self.lora_A.shape[2]:
            raise ValueError(f"{e} experts × rank {r} exceed the bank's {tuple(self.lora_A.shape[1:3])}")

    def write_slot(self, slot: int, layer: LayerSlot) -> None:
        """Copy one adapter's canonical tensors into ``slot`` (no reallocation; caller holds no_grad)."""
        self.zero_slot(slot)
        e, r = layer.A.shape[0], layer.A.shape[1]
        self.lora_A[slot, :e, :r].copy_(layer.A)
        self.lora_B[slot, :e, :, :r].copy_(layer.B)
        for name, value in (("gate_G", layer.G), ("gate_C", layer.C)):
            if value is None:
                continue
            target = getattr(self, name)
            if target is None:
                raise ValueError(f"bank has no {name} family; attach_bank(kinds=...) must include this kind")
            (target[slot, :r] if name == "gate_G" else target[slot, :, :r]).copy_(value)
        self.loaded_slots.add(slot)

    def read_slot(self, slot: int, experts: int, rank: int) -> LayerSlot:
        """A copy of ``slot``'s canonical tensors, unpadded to ``experts`` × ``rank``."""
        return LayerSlot(
            A=self.lora_A[slot, :experts, :rank].detach().clone(),
            B=self.lora_B[slot, :experts, :, :rank].detach().clone(),
            G=None if self.gate_G is None else self.gate_G[slot, :rank].detach().clone(),
            C=None if self.gate_C is None else self.gate_C[slot, :, :rank].detach().clone(),
        )

    def zero_slot(self, slot: int) -> None:
        """Zero every tensor of ``slot`` (caller holds no_grad)."""
        for tensor in (self.lora_A, self.lora_B, self.gate_G, self.gate_C):
            if tensor is not None:
                tensor[slot].zero_()
        self.loaded_slots.discard(slot)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """base_layer(x) plus, for every row whose slot holds an adapter here, that adapter's update."""
        out = self.base_layer(x)
        context = self._state.active
        if context is None:
            return out
        plan = context.plan(x.shape[0], x.device)
        if plan.count == 0 or plan.slot_set.isdisjoint(self.loaded_slots):
            return out
        if plan.rows is None:
            return self._add_delta(x, out, plan)
        rows = plan.rows  # the same arithmetic on the selected rows as on a batch of them alone
        return out.index_copy(0, rows, self._add_delta(x.index_select(0, rows), out.index_select(0, rows), plan))

    def _gather(self, plan: RowPlan) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int]:
        """The selected rows' slot tensors, cut to the live rank and expert count (padding is zero, so
        cutting it changes nothing but the cost), laid out for the forward: ``down`` [n, in, r] (with the
        low-rank gate's G stacked after A: [n, in, 2r], one product gives both), ``up`` [n, r, out] =
        (s·B)ᵀ with the row's scale folded in, ``gate_c`` [n, r, out] = Cᵀ or None, and r. Inference
        keeps them while the selection lasts (the decode loop's rows change only now and then)."""
        cached = plan.gathered.get(id(self))
        if cached is not None:
            return cached
        r, e, dtype = max(1, plan.rank), plan.experts, self.lora_A.dtype
        if plan.mix is None:  # single-expert rows only: gather expert 0 alone
            a, b = self.lora_A[plan.slots, 0, :r], self.lora_B[plan.slots, 0, :, :r]  # [n, r, in], [n, out, r]
        else:  # A_mix = Σ_e p_e A_e, B_mix = Σ_e p_e B_e per row
            mix = plan.mix[:, :e].to(dtype)
            a = torch.einsum("ne,neri->nri", mix, self.lora_A[plan.slots, :e, :r])
            b = torch.einsum("ne,neor->nor", mix, self.lora_B[plan.slots, :e, :, :r])
        if plan.lowrank_gate is not None and self.gate_G is not None:
            a = torch.cat([a, self.gate_G[plan.slots, :r]], dim=1)  # [n, 2r, in]
        c = self.gate_C[plan.slots, :, :r] if plan.output_gate is not None and self.gate_C is not None else None
        up = (b * plan.scale.to(dtype)[:, None, None]).transpose(1, 2).contiguous()
        out = (a.transpose(1, 2).contiguous(), up, None if c is None else c.transpose(1, 2).contiguous(), r)
        if not torch.is_grad_enabled():
            plan.gathered[id(self)] = out
        return out

    def _add_delta(self, x: torch.Tensor, out: torch.Tensor, plan: RowPlan) -> torch.Tensor:
        """``out`` (the base output of these rows) plus their update."""
        n, shape = x.shape[0], x.shape
        dtype = self.lora_A.dtype
        xf = x.reshape(n, -1, shape[-1]).to(dtype)  # [n, T, in]
        down, up, gate_c, r = self._gather(plan)
        h = torch.bmm(xf, down)  # [n, T, r] (or [n, T, 2r]: A x then G x)
        hg = h
        if down.shape[-1] != r:  # GLU inside the bottleneck: (A x) ⊙ σ(G x)
            h, gated = h[..., :r], h[..., :r] * torch.sigmoid(h[..., r:])
            hg = gated if plan.all_lowrank_gate else torch.where(plan.lowrank_gate[:, None, None], gated, h)
        out3 = out.reshape(n, -1, out.shape[-1])
        if gate_c is None and out.dtype == dtype:  # out + hg (s·B)ᵀ in one pass
            return torch.baddbmm(out3, hg, up).reshape(out.shape)
        y = torch.bmm(hg, up)  # [n, T, out]
        if gate_c is not None:
            gate = torch.sigmoid(torch.bmm(h, gate_c))
            y = y * gate if plan.all_output_gate else torch.where(plan.output_gate[:, None, None], y * gate, y)
        return (out3 + y.to(out.dtype)).reshape(out.shape)

    def extra_repr(self) -> str:
        s = self._state
        return f"slots={s.num_slots}, max_rank={s.max_rank}, max_experts={s.max_experts}"


def _bank_families(kinds: Iterable[str]) -> frozenset[str]:
    families: set[str] = set()
    for name in kinds:
        families |= get_kind(name).families
    return frozenset(families)


def _tied_weight_ids(model: nn.Module) -> set[int]:
    seen: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        seen[id(param)] = seen.get(id(param), 0) + 1
    return {pid for pid, count in seen.items() if count > 1}


def attach_bank(
    model: nn.Module,
    targets: str | Sequence[str],
    num_slots: int,
    limits: AdapterLimits,
    *,
    kinds: Iterable[str] | None = None,
    router_dim: int | None = None,
) -> list[str]:
    """Replace the target ``nn.Linear`` modules of ``model`` in place by :class:`AdapterBank` layers.

    ``targets``: a preset / glob spec (see :mod:`splitasr.adapters.targets`). ``num_slots``: real
    slots 1..num_slots (slot 0 is always "no adapter"). ``limits``: ``max_rank`` and ``max_experts``
    size the slot tensors. ``kinds``: the adapter kinds the bank must accept (default: all registered);
    gate tensors and the router are only allocated when a listed kind needs them. ``router_dim``:
    mixture router input size, default 2 × ``model.config.num_mel_bins``.
    Returns the adapted module names; the original layer stays reachable as ``<name>.base_layer``.
    """
    if num_slots < 1:
        raise ValueError("num_slots must be >= 1")
    if hasattr(model, STATE_MODULE_NAME):
        raise ValueError("model already has an adapter bank; detach_bank(model) first")
    families = _bank_families(registered_kinds() if kinds is None else kinds)
    if router_dim is None:
        mels = getattr(getattr(model, "config", None), "num_mel_bins", None)
        router_dim = 2 * int(mels) if mels else None
    max_experts = limits.max_experts if FAMILY_ROUTER in families else 1
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    names = resolve_targets(targets, linears)
    tied = _tied_weight_ids(model)
    for name in names:
        if id(linears[name].weight) in tied:
            raise ValueError(f"module {name!r} shares its weight with another module and cannot be adapted")
    device = next(iter(linears[n].weight.device for n in names))
    state = BankState(num_slots, limits.max_rank, max_experts, router_dim, families, device=device)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, AdapterBank(linears[name], state))
    state.layer_names = names
    model.add_module(STATE_MODULE_NAME, state)
    return names


def bank_layers(model: nn.Module) -> dict[str, AdapterBank]:
    """The model's :class:`AdapterBank` layers by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, AdapterBank)}


def detach_bank(model: nn.Module) -> None:
    """Undo :func:`attach_bank`: put every original linear layer back and drop the bank state."""
    for name, bank in bank_layers(model).items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, bank.base_layer)
    if hasattr(model, STATE_MODULE_NAME):
        delattr(model, STATE_MODULE_NAME)
