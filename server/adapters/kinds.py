"""Adapter kinds, registered by name.

Every adapter kind (``lora``, ``glora``, ``saml``, ...) lives in its own module and registers one
:class:`AdapterKind` subclass with :func:`register`. Nothing else in the server branches on the kind
name: the file loader asks the kind for the tensor names and shapes it expects, and the slot bank asks
it to translate its tensors into one *canonical slot form* that the batched layer math understands.

Canonical slot form (what :mod:`splitasr.adapters.bank` computes for one row)::

    A_mix = sum_e p_e A_e          A: [E, r, in]      p: router weights, one-hot when E == 1
    B_mix = sum_e p_e B_e          B: [E, out, r]
    h     = A_mix x
    h'    = h * sigmoid(G x)       if the slot has a low-rank gate G: [r, in]   else h' = h
    y     = B_mix h'
    y'    = y * sigmoid(C h)       if the slot has an output gate C: [out, r]   else y' = y
    delta = scale * y'

LoRA is E = 1 without gates, GLoRA adds one of the gates, SAML is E > 1 with a router. A kind that
cannot be written in this form needs a new bank family, not a branch in the engine.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch

from ..errors import InvalidAdapter

# Bank families: groups of stacked tensors in an AdapterBank. Kinds declare which ones they use, and
# training stages name the families they train.
FAMILY_LOWRANK = "lowrank"  # A [E, r, in], B [E, out, r]
FAMILY_LOWRANK_GATE = "lowrank_gate"  # G [r, in]
FAMILY_OUTPUT_GATE = "output_gate"  # C [out, r]
FAMILY_ROUTER = "router"  # router weight [E, D], bias [E]; model-level, not per layer
FAMILIES = (FAMILY_LOWRANK, FAMILY_LOWRANK_GATE, FAMILY_OUTPUT_GATE, FAMILY_ROUTER)


@dataclass(frozen=True)
class KindConfig:
    """Hyper-parameters shared by every kind; subclasses add their own fields and checks.

    ``r`` is the rank of the low-rank bottleneck and ``alpha`` the LoRA scaling numerator: the update
    is multiplied by ``alpha / r``.
    """

    r: int = 8
    alpha: float = 16.0

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise InvalidAdapter(f"rank r must be an integer >= 1, got {self.r!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)):
            raise InvalidAdapter(f"alpha must be a number, got {self.alpha!r}")
        if not (0 < float(self.alpha) < float("inf")):
            raise InvalidAdapter(f"alpha must be a finite number > 0, got {self.alpha!r}")

    @property
    def scale(self) -> float:
        """The LoRA scaling factor s = alpha / r."""
        return float(self.alpha) / self.r

    @property
    def num_experts(self) -> int:
        """Experts per target layer (1 for single-expert kinds)."""
        return 1

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able hyper-parameters (stored in the adapter file's metadata)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> KindConfig:
        """Build from metadata; unknown keys are an error, missing ones take their defaults."""
        if not isinstance(values, Mapping):
            raise InvalidAdapter(f"hyper-parameters must be a JSON object, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidAdapter(f"unknown hyper-parameter(s) {unknown} for this kind; known: {sorted(known)}")
        try:
            return cls(**values)
        except TypeError as exc:  # pragma: no cover - guarded by the key check above
            raise InvalidAdapter(f"bad hyper-parameters: {exc}") from exc


@dataclass
class LayerSlot:
    """One adapter's tensors for one target layer, in canonical slot form (see module docstring)."""

    A: torch.Tensor  # [E, r, in]
    B: torch.Tensor  # [E, out, r]
    G: torch.Tensor | None = None  # [r, in]
    C: torch.Tensor | None = None  # [out, r]


@dataclass
class SlotHeader:
    """Per-adapter (not per-layer) slot settings in canonical form."""

    scale: float
    num_experts: int = 1
    top_k: int | None = None
    router_weight: torch.Tensor | None = None  # [E, D]
    router_bias: torch.Tensor | None = None  # [E]
    lowrank_gate: bool = False
    output_gate: bool = False


class AdapterKind(ABC):
    """One adapter method: its config, tensor layout, initialisation and math.

    Module tensors are named by a *suffix* appended to the target module name in the adapter file
    (``<module>.lora_A``). Global tensors (not attached to one module, e.g. a router) have fixed names.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[KindConfig]] = KindConfig
    families: ClassVar[frozenset[str]] = frozenset({FAMILY_LOWRANK})
    # Training stage name -> bank families trained in that stage.
    stages: ClassVar[Mapping[str, frozenset[str]]] = {"train": frozenset({FAMILY_LOWRANK})}

    def make_config(self, **hyper: Any) -> KindConfig:
        """The kind's config from keyword hyper-parameters (validated)."""
        return self.config_class.from_dict(hyper)

    @abstractmethod
    def module_shapes(self, config: KindConfig, in_features: int, out_features: int) -> dict[str, tuple[int, ...]]:
        """Expected shapes of the tensors attached to one target module, by suffix."""

    def global_shapes(self, config: KindConfig, router_dim: int | None) -> dict[str, tuple[int, ...]]:
        """Expected shapes of the adapter-level tensors (none by default)."""
        return {}

    def infer_features(self, shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, int]:
        """(out_features, in_features) of a module from its tensor shapes (used without a backbone)."""
        a, b = shapes.get("lora_A"), shapes.get("lora_B")
        if a is None or b is None or len(a) < 2 or len(b) < 2:
            raise InvalidAdapter("cannot infer module size: 'lora_A' and 'lora_B' (at least 2-D) are required")
        return int(b[-2]), int(a[-1])

    @abstractmethod
    def init_module(
        self, config: KindConfig, in_features: int, out_features: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Fresh trainable tensors for one module; the initial update must be exactly zero."""

    def init_globals(
        self, config: KindConfig, router_dim: int | None, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Fresh adapter-level tensors (none by default)."""
        return {}

    def reference_mix(
        self, config: KindConfig, global_tensors: Mapping[str, torch.Tensor], embedding: torch.Tensor | None
    ) -> torch.Tensor | None:
        """Mixture weights p [batch, E] for an utterance embedding; None for single-expert kinds."""
        return None

    @abstractmethod
    def reference_delta(
        self,
        config: KindConfig,
        tensors: Mapping[str, torch.Tensor],
        x: torch.Tensor,
        mix: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The update for ONE adapter on input ``x`` [batch, ..., in], written plainly (tests use it)."""

    @abstractmethod
    def to_slot(self, config: KindConfig, tensors: Mapping[str, torch.Tensor]) -> LayerSlot:
        """Translate one module's tensors into canonical slot form."""

    @abstractmethod
    def from_slot(self, config: KindConfig, layer: LayerSlot) -> dict[str, torch.Tensor]:
        """Inverse of :meth:`to_slot` (used to export a trained slot)."""

    def slot_header(self, config: KindConfig, global_tensors: Mapping[str, torch.Tensor]) -> SlotHeader:
        """Adapter-level canonical settings."""
        return SlotHeader(scale=config.scale)

    def globals_from_header(self, config: KindConfig, header: SlotHeader) -> dict[str, torch.Tensor]:
        """Inverse of :meth:`slot_header` for the adapter-level tensors."""
        return {}

    def check_backbone(self, config: KindConfig, router_dim: int | None) -> None:
        """Raise :class:`InvalidAdapter` when the config cannot run on this backbone (default: always ok)."""


_K = TypeVar("_K", bound=type[AdapterKind])
_REGISTRY: dict[str, AdapterKind] = {}


def register(name: str) -> Callable[[_K], _K]:
    """Class decorator: register an :class:`AdapterKind` subclass under ``name``."""

    def decorate(cls: _K) -> _K:
        if name in _REGISTRY:
            raise ValueError(f"adapter kind {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls()
        return cls

    return decorate


def get_kind(name: str) -> AdapterKind:
    """The registered kind called ``name``; unknown names raise :class:`InvalidAdapter`."""
    kind = _REGISTRY.get(name) if isinstance(name, str) else None
    if kind is None:
        raise InvalidAdapter(f"unknown adapter kind {name!r}; known kinds: {sorted(_REGISTRY)}")
    return kind


def registered_kinds() -> list[str]:
    """Names of all registered kinds, sorted."""
    return sorted(_REGISTRY)
