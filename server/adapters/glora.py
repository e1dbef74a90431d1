"""``glora``: gated low-rank adaptation (GLoRA paper, arXiv 2406.02562), our exact layout.

The paper adds gated linear units (GLU) around the LoRA bottleneck but leaves the layout open; we
define two gates (``gate`` hyper-parameter):

- ``"lowrank"`` (default) — GLU inside the bottleneck, the paper's "low-rank features" variant::

      Δ(x) = s · B [(A x) ⊙ σ(G x)],   A, G ∈ R^{r×in},  B ∈ R^{out×r}

  Init: A, G Kaiming-uniform, B = 0 (so Δ = 0 and σ(G x) starts around 0.5). Extra parameters over
  LoRA at equal rank: r·in.

- ``"output"`` — GLU on the update, the paper's "hidden features" variant::

      Δ(x) = s · (B A x) ⊙ σ(C A x),   C ∈ R^{out×r}

  Init: A Kaiming-uniform, B = C = 0 (Δ = 0; the gate starts at exactly 0.5). Extra parameters: out·r.

Which layers get a gate (self-attention, cross-attention, FFN; encoder/decoder) is the target set
(see :mod:`splitasr.adapters.targets`). GLoRA is non-linear in x: it is never merged into W0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import InvalidAdapter
from .kinds import (
    FAMILY_LOWRANK,
    FAMILY_LOWRANK_GATE,
    FAMILY_OUTPUT_GATE,
    AdapterKind,
    KindConfig,
    LayerSlot,
    SlotHeader,
    register,
)
from .lora import kaiming_uniform

GATES = ("lowrank", "output")


@dataclass(frozen=True)
class GLoRAConfig(KindConfig):
    """LoRA hyper-parameters plus where the gate sits (``"lowrank"`` or ``"output"``)."""

    gate: str = "lowrank"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gate not in GATES:
            raise InvalidAdapter(f"glora gate must be one of {list(GATES)}, got {self.gate!r}")


def _gate_suffix(config: GLoRAConfig) -> str:
    return "glora_G" if config.gate == "lowrank" else "glora_C"


@register("glora")
class GLoRA(AdapterKind):
    """Gated LoRA with a GLU inside the bottleneck or on the output of the update."""

    config_class = GLoRAConfig
    families = frozenset({FAMILY_LOWRANK, FAMILY_LOWRANK_GATE, FAMILY_OUTPUT_GATE})
    stages: ClassVar[Mapping[str, frozenset[str]]] = {"train": frozenset({FAMILY_LOWRANK, FAMILY_LOWRANK_GATE, FAMILY_OUTPUT_GATE})}

    def module_shapes(self, config: KindConfig, in_features: int, out_features: int) -> dict[str, tuple[int, ...]]:
        assert isinstance(config, GLoRAConfig)
        gate_shape = (config.r, in_features) if config.gate == "lowrank" else (out_features, config.r)
        return {
            "lora_A": (config.r, in_features),
            "lora_B": (out_features, config.r),
            _gate_suffix(config): gate_shape,
        }

    def init_module(
        self, config: KindConfig, in_features: int, out_features: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        assert isinstance(config, GLoRAConfig)
        tensors = {
            "lora_A": kaiming_uniform((config.r, in_features), in_features, generator),
            "lora_B": torch.zeros(out_features, config.r),
        }
        if config.gate == "lowrank":
            tensors["glora_G"] = kaiming_uniform((config.r, in_features), in_features, generator)
        else:
            tensors["glora_C"] = torch.zeros(out_features, config.r)
        return tensors

    def reference_delta(
        self,
        config: KindConfig,
        tensors: Mapping[str, torch.Tensor],
        x: torch.Tensor,
        mix: torch.Tensor | None = None,
    ) -> torch.Tensor:
        assert isinstance(config, GLoRAConfig)
        a, b = tensors["lora_A"], tensors["lora_B"]
        h = x @ a.T  # A x
        if config.gate == "lowrank":
            return config.scale * ((h * torch.sigmoid(x @ tensors["glora_G"].T)) @ b.T)
        return config.scale * ((h @ b.T) * torch.sigmoid(h @ tensors["glora_C"].T))

    def to_slot(self, config: KindConfig, tensors: Mapping[str, torch.Tensor]) -> LayerSlot:
        assert isinstance(config, GLoRAConfig)
        return LayerSlot(
            A=tensors["lora_A"].unsqueeze(0),
            B=tensors["lora_B"].unsqueeze(0),
            G=tensors.get("glora_G"),
            C=tensors.get("glora_C"),
        )

    def from_slot(self, config: KindConfig, layer: LayerSlot) -> dict[str, torch.Tensor]:
        assert isinstance(config, GLoRAConfig)
        gate = layer.G if config.gate == "lowrank" else layer.C
        assert gate is not None
        return {"lora_A": layer.A[0], "lora_B": layer.B[0], _gate_suffix(config): gate}

    def slot_header(self, config: KindConfig, global_tensors: Mapping[str, torch.Tensor]) -> SlotHeader:
        assert isinstance(config, GLoRAConfig)
        return SlotHeader(
            scale=config.scale,
            lowrank_gate=config.gate == "lowrank",
            output_gate=config.gate == "output",
        )
