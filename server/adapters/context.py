"""Per-forward slot selection: which adapter slot each batch row uses.

Training and single forward passes wrap the model call in::

    emb = utterance_embedding(input_features, num_frames)        # [B, 2·n_mels], once per batch
    with bank_context(model, slots=slot_per_utterance, utterance_embedding=emb):
        logits = model(input_features=input_features, decoder_input_ids=ids).logits

``slots`` [B] holds one slot index per utterance (0 = backbone only). Layers that see more rows than
utterances (rows repeated ``k`` times each) expand the slot indices the same way. Mixture (SAML) router
weights are computed once on entry, from ``utterance_embedding``. The decode loop computes each
utterance's mixture once (:func:`mixture_weights`) and selects rows with :func:`rows_context` for every
forward over its changing set of rows. Without an active context every bank layer returns exactly its
base output.

One context per model at a time: a second context on the same model raises, because the layers read
the active selection from the model's shared :class:`BankState`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from .kinds import SlotHeader

STATE_MODULE_NAME = "splitasr_adapters"


class BankState(nn.Module):
    """Model-level bank state: per-slot headers (CPU), router tensors and the active context.

    Registered on the model as ``splitasr_adapters``; every :class:`AdapterBank` layer holds a
    reference. Router tensors are float32 [S+1, E_max, D] / [S+1, E_max], zero for non-mixture slots.
    """

    is_adapter_state = True

    def __init__(self, num_slots: int, max_rank: int, max_experts: int, router_dim: int | None,
                 families: frozenset[str], device: torch.device | None = None) -> None:
        super().__init__()
        self.num_slots = num_slots
        self.max_rank = max_rank
        self.max_experts = max_experts
        self.router_dim = router_dim
        self.families = families
        if max_experts > 1 and router_dim:
            size = (num_slots + 1, max_experts)
            self.router_weight = nn.Parameter(torch.zeros(*size, router_dim, device=device), requires_grad=False)
            self.router_bias = nn.Parameter(torch.zeros(*size, device=device), requires_grad=False)
        else:
            self.register_parameter("router_weight", None)
            self.register_parameter("router_bias", None)
        self.headers: list[SlotHeader | None] = [None] * (num_slots + 1)
        self.infos: list[object | None] = [None] * (num_slots + 1)  # slots.SlotInfo, for export
        self.layer_names: list[str] = []
        self.active: SlotContext | None = None


@dataclass
class RowPlan:
    """Row selection for one layer input with ``rows`` rows (computed once per context and row count)."""

    rows: torch.Tensor | None  # indices of rows with an adapter; None when every row has one
    slots: torch.Tensor  # [n] slot of each selected row
    scale: torch.Tensor  # [n] float32
    mix: torch.Tensor | None  # [n, E_max] router weights, None when no selected row is a mixture
    lowrank_gate: torch.Tensor | None  # [n] bool, None when no row uses it
    output_gate: torch.Tensor | None
    all_lowrank_gate: bool
    all_output_gate: bool
    slot_set: frozenset[int]
    count: int
    rank: int = 0  # the largest rank among the selected rows' adapters (slot tensors are cut to it)
    experts: int = 1  # the most experts among them
    # per layer: the rows' gathered slot tensors, reused while the selection lasts (inference only)
    gathered: dict[int, tuple] = field(default_factory=dict)


@dataclass
class SlotContext:
    """The active slot selection: ``slots`` [B] (CPU long) and ``router_weights`` [B, E_max] or None.

    ``router_weights`` row b is the mixture p of utterance b's slot (one-hot on expert 0 for
    single-expert kinds); it lives on the bank's device and carries gradients when the router trains.
    """

    slots: torch.Tensor
    router_weights: torch.Tensor | None
    state: BankState
    slot_list: list[int]
    broadcast: bool = False  # ``slots`` was one int: applies to any number of rows
    _plans: dict[tuple[int, str], RowPlan] = field(default_factory=dict)

    def plan(self, rows: int, device: torch.device) -> RowPlan:
        """The row plan for a layer input of ``rows`` rows (beam rows expand utterance slots)."""
        key = (rows, str(device))
        if key not in self._plans:
            self._plans[key] = self._make_plan(rows, device)
        return self._plans[key]

    def _make_plan(self, rows: int, device: torch.device) -> RowPlan:
        base = len(self.slot_list)
        if self.broadcast:
            factor, slot_list = rows, self.slot_list * rows
        elif rows % base != 0:
            raise ValueError(
                f"adapter bank layer got {rows} rows but the slot context has {base} utterances; rows must be "
                f"a multiple of the utterances (beam search repeats each utterance num_beams times)"
            )
        else:
            factor = rows // base
            slot_list = [s for s in self.slot_list for _ in range(factor)]
        active = [i for i, s in enumerate(slot_list) if s != 0]
        headers = [self.state.headers[slot_list[i]] for i in active]
        selected = torch.tensor([slot_list[i] for i in active], dtype=torch.long, device=device)
        mix = None
        if self.router_weights is not None and any(h.num_experts > 1 for h in headers if h):
            weights = self.router_weights.repeat_interleave(factor, 0)
            mix = weights.to(device).index_select(0, torch.tensor(active, dtype=torch.long, device=device))
        low = [bool(h and h.lowrank_gate) for h in headers]
        out = [bool(h and h.output_gate) for h in headers]
        infos = [self.state.infos[slot_list[i]] for i in active]
        rank = max((info.config.r if info is not None else self.state.max_rank for info in infos), default=0)
        return RowPlan(
            rows=None if len(active) == rows else torch.tensor(active, dtype=torch.long, device=device),
            slots=selected,
            scale=torch.tensor([h.scale if h else 0.0 for h in headers], dtype=torch.float32, device=device),
            mix=mix,
            lowrank_gate=torch.tensor(low, device=device) if any(low) else None,
            output_gate=torch.tensor(out, device=device) if any(out) else None,
            all_lowrank_gate=all(low),
            all_output_gate=all(out),
            slot_set=frozenset(slot_list[i] for i in active),
            count=len(active),
            rank=rank,
            experts=max((h.num_experts for h in headers if h), default=1),
        )


def get_state(model: nn.Module) -> BankState:
    """The :class:`BankState` of a model with an attached bank."""
    state = getattr(model, STATE_MODULE_NAME, None)
    if isinstance(state, BankState):
        return state
    raise ValueError("model has no adapter bank; call attach_bank(model, ...) first")


def mixture_weights(state: BankState, slot_list: Sequence[int], embedding: torch.Tensor | None) -> torch.Tensor | None:
    """Router weights [B, E_max] for the rows' slots: softmax over the slot's experts, top-k renormalised.

    Non-mixture slots get weight 1 on expert 0. Returns None when no slot is a mixture.
    """
    headers = [state.headers[s] for s in slot_list]
    if not any(h is not None and h.num_experts > 1 for h in headers):
        return None
    if embedding is None:
        raise ValueError(
            f"slots {sorted({s for s, h in zip(slot_list, headers) if h and h.num_experts > 1})} hold mixture "
            f"adapters: pass utterance_embedding=utterance_embedding(input_features, num_frames)"
        )
    assert state.router_weight is not None and state.router_bias is not None
    if embedding.shape != (len(slot_list), state.router_dim):
        raise ValueError(f"utterance_embedding must be [{len(slot_list)}, {state.router_dim}], got {tuple(embedding.shape)}")
    device = state.router_weight.device
    index = torch.tensor(list(slot_list), dtype=torch.long, device=device)
    logits = torch.einsum("bd,bed->be", embedding.to(device, torch.float32), state.router_weight[index])
    logits = logits + state.router_bias[index]
    experts = torch.tensor([h.num_experts if h else 1 for h in headers], device=device)
    keep = torch.tensor([(h.top_k or h.num_experts) if h else 1 for h in headers], device=device)
    expert_ids = torch.arange(state.max_experts, device=device)
    logits = logits.masked_fill(expert_ids[None, :] >= experts[:, None], float("-inf"))
    ranks = logits.argsort(dim=-1, descending=True, stable=True).argsort(dim=-1, stable=True)
    logits = logits.masked_fill(ranks >= keep[:, None], float("-inf"))
    return torch.softmax(logits, dim=-1)


@contextmanager
def bank_context(
    model: nn.Module,
    slots: torch.Tensor | Sequence[int] | int,
    utterance_embedding: torch.Tensor | None = None,
) -> Iterator[SlotContext]:
    """Select the adapter slot of every row for the forward passes run inside the block.

    ``slots``: one slot per utterance ([B] tensor or list), or one int for every row (training).
    ``utterance_embedding``: [B, 2·n_mels] router input; required when a selected slot is a mixture.
    """
    state = get_state(model)
    # One int without an embedding applies to any row count; with one it means "every utterance".
    broadcast = isinstance(slots, int) and utterance_embedding is None
    if isinstance(slots, int):
        slot_list = [int(slots)] * (utterance_embedding.shape[0] if utterance_embedding is not None else 1)
    else:
        slot_list = [int(s) for s in (slots.tolist() if isinstance(slots, torch.Tensor) else slots)]
    _check_slots(state, slot_list)
    with _activate(state, slot_list, mixture_weights(state, slot_list, utterance_embedding), broadcast) as context:
        yield context


def rows_selection(model: nn.Module, slots: Sequence[int],
                   router_weights: torch.Tensor | None = None) -> SlotContext | None:
    """A selection of one row per entry of ``slots`` with the mixture weights already computed
    (:func:`mixture_weights`), for :func:`activated`: the form a decode loop uses, which computes each
    utterance's mixture once and runs many forward passes over a set of rows that changes only now and
    then (a selection keeps its per-layer work while it is reused). None: the plain backbone (a model
    without a bank, or rows that all use slot 0)."""
    state = getattr(model, STATE_MODULE_NAME, None)
    if not isinstance(state, BankState) or not any(slots):
        return None
    slot_list = [int(s) for s in slots]
    _check_slots(state, slot_list)
    return SlotContext(slots=torch.tensor(slot_list, dtype=torch.long), router_weights=router_weights,
                       state=state, slot_list=slot_list)


@contextmanager
def activated(context: SlotContext | None) -> Iterator[SlotContext | None]:
    """Make ``context`` (from :func:`rows_selection`) the active selection for the block."""
    if context is None:
        yield None
        return
    state = context.state
    if state.active is not None:
        raise RuntimeError("a bank_context is already active on this model; forwards must not overlap")
    state.active = context
    try:
        yield context
    finally:
        state.active = None


@contextmanager
def rows_context(model: nn.Module, slots: Sequence[int],
                 router_weights: torch.Tensor | None = None) -> Iterator[SlotContext | None]:
    """:func:`rows_selection` made active for one block."""
    with activated(rows_selection(model, slots, router_weights)) as context:
        yield context


def _check_slots(state: BankState, slot_list: list[int]) -> None:
    if not slot_list:
        raise ValueError("slots must not be empty")
    for s in slot_list:
        if not 0 <= s <= state.num_slots:
            raise ValueError(f"slot {s} out of range 0..{state.num_slots}")
        if s != 0 and state.headers[s] is None:
            raise ValueError(f"slot {s} is empty; load an adapter into it first")


@contextmanager
def _activate(state: BankState, slot_list: list[int], router_weights: torch.Tensor | None,
              broadcast: bool) -> Iterator[SlotContext]:
    if state.active is not None:
        raise RuntimeError("a bank_context is already active on this model; forwards must not overlap")
    context = SlotContext(slots=torch.tensor(slot_list, dtype=torch.long), router_weights=router_weights,
                          state=state, slot_list=slot_list, broadcast=broadcast)
    state.active = context
    try:
        yield context
    finally:
        state.active = None
