"""Adapters for tests: random (non-zero) adapters for a real backbone as the bytes a device would
upload, and for the adapter unit tests a tiny random Whisper, one adapter per kind case, and a plain
reference model that applies one adapter by the kinds' reference math (no bank)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import torch
from torch import nn
from transformers import WhisperConfig, WhisperForConditionalGeneration

from splitasr.adapters import (
    Adapter,
    AdapterLimits,
    BackboneSpec,
    KindConfig,
    adapter_to_bytes,
    get_kind,
    new_adapter,
    resolve_targets,
)

# kind -> (hyper-parameters, targets); small updates keep transcripts sensible but not identical
KINDS = {
    "lora": ({"r": 8, "alpha": 16.0}, "attn"),
    "glora": ({"r": 6, "alpha": 12.0, "gate": "lowrank"}, "all"),
    "saml": ({"r": 4, "alpha": 8.0, "experts": 3}, "decoder"),
}


def random_adapter(spec: BackboneSpec, kind: str, seed: int, std: float = 0.02) -> Adapter:
    hyper, targets = KINDS[kind]
    impl = get_kind(kind)
    if kind == "saml":
        hyper = {**hyper, "router_dim": spec.router_dim}
    config = impl.make_config(**hyper)
    return randomize(new_adapter(kind, config, resolve_targets(targets, spec.linear_shapes), spec, seed=seed),
                     seed, std)


def adapter_bytes(spec: BackboneSpec, kind: str, seed: int, std: float = 0.02) -> bytes:
    return adapter_to_bytes(random_adapter(spec, kind, seed, std))


def lora_delta_w(config: KindConfig, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """A LoRA's weight update ΔW [out, in] = s·B·A: W0 + ΔW is the same layer with no adapter."""
    return config.scale * (tensors["lora_B"] @ tensors["lora_A"])


N_MELS = 8
FRAMES = 64  # 2 × max_source_positions
ROUTER_DIM = 2 * N_MELS

# name -> (kind, hyper-parameters, target spec); ranks differ so zero padding is exercised.
CASES: dict[str, tuple[str, dict, str]] = {
    "lora": ("lora", {"r": 4, "alpha": 8.0}, "attn"),
    "glora-lowrank": ("glora", {"r": 4, "alpha": 8.0, "gate": "lowrank"}, "cross,ffn"),
    "glora-output": ("glora", {"r": 3, "alpha": 6.0, "gate": "output"}, "all"),
    "saml": ("saml", {"r": 4, "alpha": 8.0, "experts": 3, "router_dim": ROUTER_DIM}, "all"),
    "saml-topk": ("saml", {"r": 2, "alpha": 4.0, "experts": 4, "top_k": 2, "router_dim": ROUTER_DIM}, "decoder"),
}
LIMITS = AdapterLimits(max_rank=8, max_experts=4)


def tiny_config(**overrides: object) -> WhisperConfig:
    values: dict[str, object] = {
        "vocab_size": 100, "d_model": 64, "encoder_layers": 2, "decoder_layers": 2,
        "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 128,
        "decoder_ffn_dim": 128, "num_mel_bins": N_MELS, "max_source_positions": FRAMES // 2,
        "max_target_positions": 64, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
        "decoder_start_token_id": 1, "init_std": 0.2,
    }
    values.update(overrides)
    return WhisperConfig(**values)


def tiny_whisper(seed: int = 0, **overrides: object) -> WhisperForConditionalGeneration:
    torch.manual_seed(seed)
    return WhisperForConditionalGeneration(tiny_config(**overrides)).eval()


def randomize(adapter: Adapter, seed: int, std: float = 0.15) -> Adapter:
    """Give every tensor random values so that the update is far from zero (and within the magnitude
    bounds of :mod:`splitasr.adapters.bounds`)."""
    gen = torch.Generator().manual_seed(seed)
    for group in [*adapter.tensors.values(), adapter.global_tensors]:
        for name, tensor in group.items():
            scale = 1.0 if name.startswith("router") else std
            group[name] = torch.randn(tensor.shape, generator=gen) * scale
    return adapter


def make_case(case: str, spec: BackboneSpec, seed: int = 1) -> Adapter:
    kind, hyper, targets = CASES[case]
    config = get_kind(kind).make_config(**hyper)
    names = resolve_targets(targets, spec.linear_shapes)
    return randomize(new_adapter(kind, config, names, spec, seed=seed, creator="tests"), seed)


class ReferenceLinear(nn.Module):
    """base(x) + the kind's plain reference delta for ONE adapter (no bank involved)."""

    def __init__(self, base: nn.Linear, adapter: Adapter, module: str, mix: Callable[[], torch.Tensor | None]):
        super().__init__()
        self.base, self.adapter, self.module, self.mix = base, adapter, module, mix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        impl = self.adapter.kind_impl
        mix = self.mix()
        if mix is not None and mix.shape[0] != x.shape[0]:
            mix = mix.repeat_interleave(x.shape[0] // mix.shape[0], 0)
        tensors: Mapping[str, torch.Tensor] = self.adapter.tensors[self.module]
        return self.base(x) + impl.reference_delta(self.adapter.config, tensors, x, mix)


class ReferenceModel:
    """A copy of the backbone with exactly one adapter applied by the reference math."""

    def __init__(self, base: nn.Module, adapter: Adapter | None):
        self.model = copy.deepcopy(base)
        self.embedding: torch.Tensor | None = None
        if adapter is None:
            return
        impl = adapter.kind_impl
        for module in adapter.targets:
            parent_name, _, child = module.rpartition(".")
            parent = self.model.get_submodule(parent_name)
            mix_fn = lambda: impl.reference_mix(adapter.config, adapter.global_tensors, self.embedding)
            setattr(parent, child, ReferenceLinear(getattr(parent, child), adapter, module, mix_fn))

    def __call__(self, embedding: torch.Tensor | None = None, **inputs: torch.Tensor):
        self.embedding = embedding
        return self.model(**inputs)
