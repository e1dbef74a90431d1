"""A sample adapter to try the system with, before any training: seeded small random weights.

The update is small enough to keep transcripts readable and large enough that they visibly differ
from the plain backbone's (so uploading it and naming it as ``model`` shows that it is applied).
``zero=True`` gives the trained-from-nothing start instead: an exactly zero update, output unchanged.
"""

from __future__ import annotations

import torch

from .adapter import Adapter, BackboneSpec, new_adapter
from .kinds import get_kind
from .targets import resolve_targets

# kind -> hyper-parameters of the sample (rank, scale; SAML: a three-expert mixture)
SAMPLE_HYPERPARAMETERS: dict[str, dict] = {
    "lora": {"r": 8, "alpha": 16.0},
    "glora": {"r": 8, "alpha": 16.0, "gate": "lowrank"},
    "saml": {"r": 4, "alpha": 8.0, "experts": 3},
}
SAMPLE_TARGETS = "attn"
# Standard deviation of every low-rank tensor, per kind, on the attention linears: on tiny.en's
# real-speech fixtures this changes a word in some utterances and keeps every transcript readable
# (twice as much garbles plain LoRA). The SAML router's weights are standard normal.
SAMPLE_STD = {"lora": 0.03, "glora": 0.05, "saml": 0.04}
CREATOR = "splitasr adapter new"


def sample_adapter(spec: BackboneSpec, kind: str = "lora", targets: str = SAMPLE_TARGETS, *, seed: int = 0,
                   rank: int | None = None, std: float | None = None, zero: bool = False) -> Adapter:
    """A valid adapter of ``kind`` for the backbone ``spec`` describes, the same weights for the same seed.

    ``std``: of the random low-rank tensors (default :data:`SAMPLE_STD` of the kind).
    """
    std = SAMPLE_STD.get(kind, 0.03) if std is None else std
    hyper = dict(SAMPLE_HYPERPARAMETERS[kind]) if kind in SAMPLE_HYPERPARAMETERS else {}
    if rank is not None:
        hyper.update(r=rank, alpha=2.0 * rank)
    if kind == "saml":
        hyper["router_dim"] = spec.router_dim
    config = get_kind(kind).make_config(**hyper)
    adapter = new_adapter(kind, config, resolve_targets(targets, spec.linear_shapes), spec, seed=seed,
                          creator=CREATOR)
    if zero:
        return adapter
    generator = torch.Generator().manual_seed(seed)
    for group in [*adapter.tensors.values(), adapter.global_tensors]:
        for name, tensor in group.items():
            scale = 1.0 if name.startswith("router") else std
            group[name] = torch.randn(tensor.shape, generator=generator) * scale
    return adapter
