"""The in-memory adapter, the limits every adapter is checked against, and the backbone identity.

An :class:`Adapter` is kind + config + tensors grouped by the backbone module they attach to. It is
what the file loader returns, what :func:`splitasr.adapters.slots.load_into_slot` copies into a bank
slot, and what training exports.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

import torch
from torch import nn

from ..errors import InvalidAdapter
from .kinds import AdapterKind, KindConfig, get_kind
from .targets import EXCLUDED

MiB = 1 << 20

# Config fields that define the architecture (those present on the model's config are hashed).
_ARCH_FIELDS = (
    "model_type", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
    "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "vocab_size", "num_mel_bins",
    "max_source_positions", "max_target_positions", "hidden_size", "num_hidden_layers",
    "num_attention_heads", "intermediate_size",
)
_DIGEST_ELEMENTS = 256


@dataclass(frozen=True)
class AdapterLimits:
    """Upper bounds applied to every adapter the server accepts (and to bank sizes)."""

    max_rank: int = 64
    max_experts: int = 8
    max_file_bytes: int = 64 * MiB
    max_header_bytes: int = 1 * MiB
    max_tensors: int = 4096
    max_zip_members: int = 64  # PEFT zip import
    max_zip_ratio: float = 100.0  # uncompressed / compressed size per zip member


@dataclass(frozen=True)
class BackboneSpec:
    """What an adapter is checked against: a backbone's name, fingerprint and adaptable linears.

    ``linear_shapes`` maps every ``nn.Linear`` module name to (out_features, in_features);
    ``router_dim`` is the SAML router input size (2 × n_mels), None when the backbone has no mels.
    ``adaptable`` names the linears an adapter may attach to: the layers of the model's adapter bank
    when it carries one (a server's ``SPLITASR_ADAPTER_TARGETS``), else every linear but the output
    head (:data:`~splitasr.adapters.targets.EXCLUDED`); ``banked`` says which of the two it is.
    """

    name: str
    fingerprint: str
    linear_shapes: Mapping[str, tuple[int, int]]
    router_dim: int | None = None
    # not part of the identity: the same backbone with or without a bank compares equal
    adaptable: frozenset[str] | None = field(default=None, compare=False)
    banked: bool = field(default=False, compare=False)

    @classmethod
    def from_model(cls, name: str, model: nn.Module) -> BackboneSpec:
        """Describe ``model``; the result is the same before and after :func:`attach_bank`.

        ``adaptable`` and ``banked`` reflect the bank when the model carries one (they take no part in
        comparisons). Fingerprint = sha256 over (1) the model class and the architecture fields of its config,
        (2) every parameter name and shape (sorted; ``.base_layer`` and bank tensors are ignored, linear
        weights count with their logical (out, in) shape, buffers are ignored) and (3) a cheap weights
        digest: the first 256 values of every layer-norm and embedding tensor, rounded to float16.
        So fp32 and fp16 copies of one checkpoint agree, and quantised copies are meant to (their
        packed linear weights are not hashed), while another checkpoint of the same architecture
        differs. A bf16 copy may differ: its rounding is coarser than float16.
        """
        linear: dict[str, tuple[int, int]] = {}
        named: dict[str, tuple[list[int], torch.Tensor]] = {}
        banked: set[str] = set()
        for mod_name, module in model.named_modules():
            if getattr(module, "is_adapter_bank", False):
                banked.add(mod_name)
                continue
            if getattr(module, "is_adapter_state", False):
                continue
            canonical = mod_name.replace(".base_layer", "")
            is_linear = isinstance(module, nn.Linear)
            if is_linear:
                linear[canonical] = (module.out_features, module.in_features)
            for t_name, tensor in module.named_parameters(recurse=False):
                shape = [module.out_features, module.in_features] if is_linear and t_name == "weight" else list(tensor.shape)
                named[f"{canonical}.{t_name}" if canonical else t_name] = (shape, tensor)
        config = getattr(model, "config", None)
        arch = {"class": type(model).__name__}
        for key in _ARCH_FIELDS:
            if config is not None and hasattr(config, key):
                arch[key] = getattr(config, key)
        layout = [[n, shape] for n, (shape, _) in sorted(named.items())]
        hasher = hashlib.sha256(json.dumps({"arch": arch, "tensors": layout}, sort_keys=True).encode())
        for n, (_, tensor) in sorted(named.items()):
            if "norm" in n or "embed" in n:
                sample = tensor.detach().reshape(-1)[:_DIGEST_ELEMENTS].to("cpu", torch.float16)
                hasher.update(n.encode() + sample.numpy().tobytes())
        mels = getattr(config, "num_mel_bins", None) if config is not None else None
        adaptable = banked or {n for n in linear if n.rpartition(".")[2] not in EXCLUDED}
        return cls(name=name, fingerprint=hasher.hexdigest(), linear_shapes=linear,
                   router_dim=2 * int(mels) if mels else None, adaptable=frozenset(adaptable),
                   banked=bool(banked))

    def check_adaptable(self, module: str, what: str) -> None:
        """Raise :class:`InvalidAdapter` when ``module`` (a linear of this backbone) cannot carry an
        adapter here; ``what`` names the tensor or target in the message."""
        if self.adaptable is None or module in self.adaptable:
            return
        if module.rpartition(".")[2] in EXCLUDED:
            raise InvalidAdapter(
                f"{what} attaches to {module!r}, the output head, which adapters cannot target (it is tied to "
                "the token embedding); adapt the attention or feed-forward layers instead"
            )
        if self.banked:
            example = min(self.adaptable) if self.adaptable else "none"
            raise InvalidAdapter(
                f"{what} attaches to {module!r}, which this server does not adapt: its adapter layers "
                f"(SPLITASR_ADAPTER_TARGETS) cover {len(self.adaptable)} linear layers, e.g. {example!r}"
            )
        raise InvalidAdapter(f"{what} attaches to {module!r}, which adapters cannot target")


@dataclass
class Adapter:
    """One adapter: ``tensors[module][suffix]`` plus adapter-level ``global_tensors`` (e.g. a router)."""

    kind: str
    config: KindConfig
    tensors: dict[str, dict[str, torch.Tensor]]
    global_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    backbone_name: str = ""
    backbone_fingerprint: str = ""
    created_at: str = ""
    creator: str = ""

    @property
    def targets(self) -> list[str]:
        """The backbone modules this adapter attaches to, sorted."""
        return sorted(self.tensors)

    @property
    def kind_impl(self) -> AdapterKind:
        """The registered kind implementation."""
        return get_kind(self.kind)

    def flat_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors named as in the file: ``<module>.<suffix>`` and the global names."""
        flat = {f"{m}.{s}": t for m, group in self.tensors.items() for s, t in group.items()}
        flat.update(self.global_tensors)
        return flat

    def num_parameters(self) -> int:
        """Total number of stored values (to compare kinds at equal parameter count)."""
        return sum(t.numel() for t in self.flat_tensors().values())


def new_adapter(
    kind: str,
    config: KindConfig,
    targets: Iterable[str],
    backbone: BackboneSpec,
    *,
    seed: int = 0,
    creator: str = "",
) -> Adapter:
    """A freshly initialised adapter (initial update exactly zero) for ``targets`` of ``backbone``."""
    impl = get_kind(kind)
    if not isinstance(config, impl.config_class):
        raise InvalidAdapter(f"kind {kind!r} needs a {impl.config_class.__name__}, got {type(config).__name__}")
    impl.check_backbone(config, backbone.router_dim)
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for target in sorted(set(targets)):
        if target not in backbone.linear_shapes:
            raise InvalidAdapter(f"target module {target!r} is not a linear layer of backbone {backbone.name!r}")
        backbone.check_adaptable(target, "target")
        out_f, in_f = backbone.linear_shapes[target]
        tensors[target] = impl.init_module(config, in_f, out_f, generator)
    return Adapter(
        kind=kind,
        config=config,
        tensors=tensors,
        global_tensors=impl.init_globals(config, backbone.router_dim, generator),
        backbone_name=backbone.name,
        backbone_fingerprint=backbone.fingerprint,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        creator=creator,
    )


def check_limits(config: KindConfig, limits: AdapterLimits) -> None:
    """Rank and expert count within ``limits``."""
    if config.r > limits.max_rank:
        raise InvalidAdapter(f"rank {config.r} exceeds the limit {limits.max_rank}")
    if config.num_experts > limits.max_experts:
        raise InvalidAdapter(f"{config.num_experts} experts exceed the limit {limits.max_experts}")


def check_backbone_match(name: str, fingerprint: str, expected: BackboneSpec) -> None:
    """The adapter's backbone must be ``expected``; the message names both."""
    if fingerprint != expected.fingerprint:
        raise InvalidAdapter(
            f"adapter was trained for backbone {name or '?'!r} (fingerprint {fingerprint[:12] or '?'}…) "
            f"but this server runs {expected.name!r} (fingerprint {expected.fingerprint[:12]}…)"
        )


def check_layout(
    kind: AdapterKind,
    config: KindConfig,
    shapes: Mapping[str, tuple[int, ...]],
    targets: Iterable[str] | None,
    backbone: BackboneSpec | None,
) -> dict[str, dict[str, str]]:
    """Check tensor names and shapes; returns ``{module: {suffix: tensor name}}``.

    Every tensor must be a global tensor of the kind or ``<module>.<suffix>`` for a target module and
    a suffix of the kind, with exactly the shape the kind expects for that module's size.
    """
    router_dim = backbone.router_dim if backbone is not None else None
    kind.check_backbone(config, router_dim)
    global_shapes = kind.global_shapes(config, router_dim)
    sample_suffixes = set(kind.module_shapes(config, 1, 1))
    target_set = set(targets) if targets is not None else None
    groups: dict[str, dict[str, str]] = {}
    for name, shape in shapes.items():
        if name in global_shapes:
            if tuple(shape) != global_shapes[name]:
                raise InvalidAdapter(
                    f"tensor {name!r} has shape {tuple(shape)} but a {kind.name} adapter expects {global_shapes[name]}"
                )
            continue
        module, _, suffix = name.rpartition(".")
        if not module or suffix not in sample_suffixes:
            raise InvalidAdapter(
                f"tensor {name!r} is not '<module>.<suffix>' with a {kind.name} suffix {sorted(sample_suffixes)}"
                + (f" nor one of {sorted(global_shapes)}" if global_shapes else "")
            )
        if target_set is not None and module not in target_set:
            raise InvalidAdapter(f"tensor {name!r} attaches to module {module!r}, which is not in the metadata targets")
        if backbone is not None and module not in backbone.linear_shapes:
            raise InvalidAdapter(
                f"tensor {name!r} attaches to unknown target module {module!r}: backbone {backbone.name!r} "
                f"has no linear layer of that name"
            )
        if backbone is not None:
            backbone.check_adaptable(module, f"tensor {name!r}")
        groups.setdefault(module, {})[suffix] = name
    missing_globals = sorted(set(global_shapes) - set(shapes))
    if missing_globals:
        raise InvalidAdapter(f"{kind.name} adapter is missing tensor(s) {missing_globals}")
    for module in sorted((target_set or set()) - set(groups)):
        raise InvalidAdapter(f"metadata target {module!r} has no tensors")
    for module, suffixes in sorted(groups.items()):
        missing = sorted(sample_suffixes - set(suffixes))
        if missing:
            raise InvalidAdapter(f"module {module!r} is missing tensor(s) {[f'{module}.{s}' for s in missing]}")
        module_shapes = {s: tuple(shapes[n]) for s, n in suffixes.items()}
        if backbone is not None:
            out_f, in_f = backbone.linear_shapes[module]
        else:
            out_f, in_f = kind.infer_features(module_shapes)
        expected = kind.module_shapes(config, in_f, out_f)
        for suffix, name in suffixes.items():
            if module_shapes[suffix] != expected[suffix]:
                raise InvalidAdapter(
                    f"tensor {name!r} has shape {module_shapes[suffix]} but module {module!r} "
                    f"({out_f}×{in_f}) with {_describe(config)} expects {expected[suffix]}"
                )
    if not groups:
        raise InvalidAdapter("adapter has no module tensors")
    return groups


def _describe(config: KindConfig) -> str:
    text = f"rank {config.r}"
    return text + (f", {config.num_experts} experts" if config.num_experts > 1 else "")


def check_finite(tensors: Mapping[str, torch.Tensor]) -> None:
    """Every value finite (no NaN/Inf)."""
    for name, tensor in tensors.items():
        if not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise InvalidAdapter(f"tensor {name!r} contains {bad} non-finite value(s) (NaN or Inf)")

