"""``saml``: speaker-adaptive mixture of LoRA experts (SAML paper, Zhao et al.; see the design notes).

Each target layer holds E LoRA experts {A_e ∈ R^{r×in}, B_e ∈ R^{out×r}}. A router turns an utterance
representation u into weights p ∈ Δ^E, and the experts are mixed *before* the product, as the authors'
code does::

    p     = softmax(W_r u + b_r)                 (top-k: keep the k largest, renormalise)
    A_mix = Σ_e p_e A_e,   B_mix = Σ_e p_e B_e
    Δ(x)  = s · B_mix A_mix x,   s = α / r

Router input (our choice; the paper routes on hidden states): the **utterance embedding**
``u = [mean_t(logmel), std_t(logmel)] ∈ R^{2·n_mels}`` over the frames that hold audio, computed once
by the engine from the encoder's input features (:func:`utterance_embedding`). It is fixed per
utterance, so every decoder step (with a KV cache, with beam expansion) sees the same weights, and it
costs nothing next to the encoder.

One router per adapter, shared by all target layers (not one per layer): with a fixed utterance input,
per-layer routers would only be L independent linear maps of the same vector; one router keeps
"expert e" meaning the same speaker cluster in every layer, the weights are computed once per
utterance, and speaker adaptation of the router (stage 2, a few minutes of one speaker) trains only
(2·n_mels + 1)·E numbers, which is hard to overfit.

Training stages (families trained, see :data:`SAML.stages`): ``pretrain`` = experts + router on many
speakers; ``adapt`` = router only on one speaker; ``adapt_full`` = router + experts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import InvalidAdapter
from .kinds import (
    FAMILY_LOWRANK,
    FAMILY_ROUTER,
    AdapterKind,
    KindConfig,
    LayerSlot,
    SlotHeader,
    register,
)
from .lora import kaiming_uniform

MAX_EXPERTS = 64
ROUTER_INPUT = "logmel_mean_std"
ROUTER_WEIGHT, ROUTER_BIAS = "router.weight", "router.bias"


@dataclass(frozen=True)
class SAMLConfig(KindConfig):
    """LoRA hyper-parameters plus the mixture: ``experts`` E, optional ``top_k``, router input size."""

    experts: int = 4
    top_k: int | None = None
    router_dim: int = 160  # 2 × n_mels (80 mel bins for Whisper tiny..large-v2)
    router_input: str = ROUTER_INPUT

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.experts, bool) or not isinstance(self.experts, int):
            raise InvalidAdapter(f"saml experts must be an integer, got {self.experts!r}")
        if not 2 <= self.experts <= MAX_EXPERTS:
            raise InvalidAdapter(f"saml experts must be in 2..{MAX_EXPERTS}, got {self.experts}")
        if self.top_k is not None and (
            isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or not 1 <= self.top_k <= self.experts
        ):
            raise InvalidAdapter(f"saml top_k must be null or in 1..experts ({self.experts}), got {self.top_k!r}")
        if isinstance(self.router_dim, bool) or not isinstance(self.router_dim, int) or self.router_dim < 1:
            raise InvalidAdapter(f"saml router_dim must be an integer >= 1, got {self.router_dim!r}")
        if self.router_input != ROUTER_INPUT:
            raise InvalidAdapter(f"saml router_input must be {ROUTER_INPUT!r}, got {self.router_input!r}")

    @property
    def num_experts(self) -> int:
        return self.experts


def utterance_embedding(input_features: torch.Tensor, num_frames: torch.Tensor | None = None) -> torch.Tensor:
    """The SAML router input: per-utterance mean and std over time of the log-mel features.

    ``input_features`` is the encoder input [batch, n_mels, frames]; ``num_frames`` [batch] says how
    many leading frames hold audio (the rest is Whisper's 30 s padding, which would otherwise make the
    embedding depend on the utterance length). Returns float32 [batch, 2·n_mels] = [mean, std].
    """
    feats = input_features.float()
    batch, _, frames = feats.shape
    if num_frames is None:
        mask = torch.ones(batch, frames, device=feats.device)
    else:
        counts = num_frames.to(feats.device).clamp(1, frames)
        mask = (torch.arange(frames, device=feats.device)[None, :] < counts[:, None]).float()
    weight = (mask / mask.sum(-1, keepdim=True))[:, None, :]  # [batch, 1, frames]
    mean = (feats * weight).sum(-1)
    var = (((feats - mean[..., None]) ** 2) * weight).sum(-1)
    return torch.cat([mean, var.clamp_min(0).sqrt()], dim=-1)


def reference_router(
    embedding: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, top_k: int | None
) -> torch.Tensor:
    """Router weights p [batch, E]: softmax, then keep the top-k and renormalise."""
    probs = torch.softmax(embedding.float() @ weight.float().T + bias.float(), dim=-1)
    if top_k is None or top_k >= probs.shape[-1]:
        return probs
    values, index = probs.topk(top_k, dim=-1)
    kept = torch.zeros_like(probs).scatter(-1, index, values)
    return kept / kept.sum(-1, keepdim=True)


@register("saml")
class SAML(AdapterKind):
    """Mixture of LoRA experts with an utterance-level router."""

    config_class = SAMLConfig
    families = frozenset({FAMILY_LOWRANK, FAMILY_ROUTER})
    stages: ClassVar[Mapping[str, frozenset[str]]] = {
        "pretrain": frozenset({FAMILY_LOWRANK, FAMILY_ROUTER}),
        "adapt": frozenset({FAMILY_ROUTER}),
        "adapt_full": frozenset({FAMILY_LOWRANK, FAMILY_ROUTER}),
    }

    def module_shapes(self, config: KindConfig, in_features: int, out_features: int) -> dict[str, tuple[int, ...]]:
        assert isinstance(config, SAMLConfig)
        e, r = config.experts, config.r
        return {"lora_A": (e, r, in_features), "lora_B": (e, out_features, r)}

    def global_shapes(self, config: KindConfig, router_dim: int | None) -> dict[str, tuple[int, ...]]:
        assert isinstance(config, SAMLConfig)
        return {ROUTER_WEIGHT: (config.experts, config.router_dim), ROUTER_BIAS: (config.experts,)}

    def init_module(
        self, config: KindConfig, in_features: int, out_features: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        assert isinstance(config, SAMLConfig)
        e, r = config.experts, config.r
        return {
            "lora_A": kaiming_uniform((e, r, in_features), in_features, generator),
            "lora_B": torch.zeros(e, out_features, r),
        }

    def init_globals(
        self, config: KindConfig, router_dim: int | None, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        assert isinstance(config, SAMLConfig)
        return {
            ROUTER_WEIGHT: torch.randn(config.experts, config.router_dim, generator=generator) * 0.02,
            ROUTER_BIAS: torch.zeros(config.experts),
        }

    def reference_mix(
        self, config: KindConfig, global_tensors: Mapping[str, torch.Tensor], embedding: torch.Tensor | None
    ) -> torch.Tensor | None:
        assert isinstance(config, SAMLConfig)
        if embedding is None:
            raise ValueError("saml needs an utterance embedding to compute its router weights")
        return reference_router(embedding, global_tensors[ROUTER_WEIGHT], global_tensors[ROUTER_BIAS], config.top_k)

    def reference_delta(
        self,
        config: KindConfig,
        tensors: Mapping[str, torch.Tensor],
        x: torch.Tensor,
        mix: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if mix is None:
            raise ValueError("saml reference_delta needs router weights (mix)")
        rows = []
        for row in range(x.shape[0]):  # one utterance at a time, written plainly on purpose
            p = mix[row].to(x.dtype)
            a_mix = sum(p[e] * tensors["lora_A"][e] for e in range(p.shape[0]))
            b_mix = sum(p[e] * tensors["lora_B"][e] for e in range(p.shape[0]))
            rows.append(config.scale * ((x[row] @ a_mix.T) @ b_mix.T))
        return torch.stack(rows)

    def to_slot(self, config: KindConfig, tensors: Mapping[str, torch.Tensor]) -> LayerSlot:
        return LayerSlot(A=tensors["lora_A"], B=tensors["lora_B"])

    def from_slot(self, config: KindConfig, layer: LayerSlot) -> dict[str, torch.Tensor]:
        return {"lora_A": layer.A, "lora_B": layer.B}

    def slot_header(self, config: KindConfig, global_tensors: Mapping[str, torch.Tensor]) -> SlotHeader:
        assert isinstance(config, SAMLConfig)
        return SlotHeader(
            scale=config.scale,
            num_experts=config.experts,
            top_k=config.top_k,
            router_weight=global_tensors[ROUTER_WEIGHT],
            router_bias=global_tensors[ROUTER_BIAS],
        )

    def globals_from_header(self, config: KindConfig, header: SlotHeader) -> dict[str, torch.Tensor]:
        assert header.router_weight is not None and header.router_bias is not None
        return {ROUTER_WEIGHT: header.router_weight, ROUTER_BIAS: header.router_bias}

    def check_backbone(self, config: KindConfig, router_dim: int | None) -> None:
        assert isinstance(config, SAMLConfig)
        if router_dim is not None and config.router_dim != router_dim:
            raise InvalidAdapter(
                f"saml router expects {config.router_dim}-dim utterance embeddings but this backbone gives "
                f"{router_dim} (2 × n_mels)"
            )
