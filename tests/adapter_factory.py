"""Random (non-zero) adapters for a real backbone, as the bytes a device would upload."""

from __future__ import annotations

import torch

from splitasr.adapters import Adapter, BackboneSpec, adapter_to_bytes, get_kind, new_adapter, resolve_targets

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
    adapter = new_adapter(kind, config, resolve_targets(targets, spec.linear_shapes), spec, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    for group in [*adapter.tensors.values(), adapter.global_tensors]:
        for name, tensor in group.items():
            scale = 1.0 if name.startswith("router") else std
            group[name] = torch.randn(tensor.shape, generator=gen) * scale
    return adapter


def adapter_bytes(spec: BackboneSpec, kind: str, seed: int, std: float = 0.02) -> bytes:
    return adapter_to_bytes(random_adapter(spec, kind, seed, std))
