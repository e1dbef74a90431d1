"""``lora``: low-rank adaptation, Δ(x) = s · B A x with s = α / r (Hu et al., 2021).

A ∈ R^{r×in} starts Kaiming-uniform (as ``nn.Linear`` and PEFT do), B ∈ R^{out×r} starts at zero, so a
fresh adapter leaves the backbone unchanged. LoRA is linear in x and can be merged: W0 + s · B A.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

import torch

from .kinds import (
    FAMILY_LOWRANK,
    AdapterKind,
    KindConfig,
    LayerSlot,
    register,
)


def kaiming_uniform(shape: tuple[int, ...], fan_in: int, generator: torch.Generator) -> torch.Tensor:
    """Kaiming-uniform with a = √5 (the ``nn.Linear`` default PEFT uses for ``lora_A``)."""
    bound = math.sqrt(6.0 / ((1 + 5.0) * fan_in))
    return (torch.rand(shape, generator=generator) * 2 - 1) * bound


def low_rank_product(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """B A x for x [..., in], A [r, in], B [out, r]."""
    return (x @ a.transpose(0, 1)) @ b.transpose(0, 1)


@register("lora")
class LoRA(AdapterKind):
    """Plain LoRA on each target linear layer."""

    config_class = KindConfig
    families = frozenset({FAMILY_LOWRANK})
    stages: ClassVar[Mapping[str, frozenset[str]]] = {"train": frozenset({FAMILY_LOWRANK})}

    def module_shapes(self, config: KindConfig, in_features: int, out_features: int) -> dict[str, tuple[int, ...]]:
        return {"lora_A": (config.r, in_features), "lora_B": (out_features, config.r)}

    def init_module(
        self, config: KindConfig, in_features: int, out_features: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        return {
            "lora_A": kaiming_uniform((config.r, in_features), in_features, generator),
            "lora_B": torch.zeros(out_features, config.r),
        }

    def reference_delta(
        self,
        config: KindConfig,
        tensors: Mapping[str, torch.Tensor],
        x: torch.Tensor,
        mix: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return config.scale * low_rank_product(x, tensors["lora_A"], tensors["lora_B"])

    def to_slot(self, config: KindConfig, tensors: Mapping[str, torch.Tensor]) -> LayerSlot:
        return LayerSlot(A=tensors["lora_A"].unsqueeze(0), B=tensors["lora_B"].unsqueeze(0))

    def from_slot(self, config: KindConfig, layer: LayerSlot) -> dict[str, torch.Tensor]:
        return {"lora_A": layer.A[0], "lora_B": layer.B[0]}
