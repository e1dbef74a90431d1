"""The rescorer file: one ``.safetensors`` file, validated on every load, never unpickled.

Tensors: the LoRA tensors named after the encoder module they attach to
(``encoder.layer.0.attention.self.query.lora_A``), plus ``head.weight`` [hidden] and ``head.bias`` [1].
``__metadata__`` holds one key, ``splitasr_rescorer``, whose value is a JSON string::

    {"format_version": 1, "kind": "lorb",
     "lora": {"r": 4, "alpha": 8.0}, "targets": ["encoder.layer.0.attention.self.query", ...],
     "encoder": {"name": "minilm", "fingerprint": "<sha256 hex>"},
     "pooling": "mean", "fusion": {"weight": 0.5, "length_weight": 0.1},
     "asr_backbone": "tiny.en", "training": {...}, "created_at": "...", "creator": "splitasr rescorer train"}

Checks, in order: size and header bounds (shared with adapter files), metadata (format version, kind,
hyper-parameters within limits, pooling, finite fusion weights), encoder fingerprint when an encoder is
given, LoRA names and shapes against the encoder's linears, head shapes, then every value finite.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors.torch import load as safetensors_from_bytes  # safetensors only: never pickle

from ..adapters import Adapter, AdapterLimits, BackboneSpec, KindConfig, get_kind
from ..adapters.adapter import check_backbone_match, check_finite, check_layout, check_limits
from ..adapters.fileformat import _read_source, metadata_object, read_header
from ..errors import InvalidAdapter
from ..fileio import atomic_write_bytes
from .model import POOLINGS, Fusion, Rescorer

FORMAT_VERSION = 1
METADATA_KEY = "splitasr_rescorer"
KIND = "lorb"
HEAD_WEIGHT, HEAD_BIAS = "head.weight", "head.bias"
REQUIRED_KEYS = ("format_version", "kind", "lora", "targets", "encoder", "pooling", "fusion")
MAX_FUSION_WEIGHT = 1e4


def is_rescorer_file(data: bytes, limits: AdapterLimits | None = None) -> bool:
    """Whether ``data`` is a safetensors file whose metadata says it is a rescorer (cheap; no tensors read)."""
    try:
        _, metadata = read_header(data, limits or AdapterLimits())
    except InvalidAdapter:
        return False
    return METADATA_KEY in metadata


def rescorer_to_bytes(rescorer: Rescorer) -> bytes:
    lora = rescorer.lora
    tensors = {n: t.detach().to("cpu", torch.float32).contiguous() for n, t in lora.flat_tensors().items()}
    tensors[HEAD_WEIGHT] = rescorer.head_weight.detach().to("cpu", torch.float32).reshape(-1).contiguous()
    tensors[HEAD_BIAS] = rescorer.head_bias.detach().to("cpu", torch.float32).reshape(1).contiguous()
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "lora": lora.config.to_dict(),
        "targets": lora.targets,
        "encoder": {"name": lora.backbone_name, "fingerprint": lora.backbone_fingerprint},
        "pooling": rescorer.pooling,
        "fusion": rescorer.fusion.to_dict(),
        "asr_backbone": rescorer.asr_backbone,
        "training": rescorer.training,
        "created_at": lora.created_at,
        "creator": lora.creator,
    }
    return safetensors.torch.save(tensors, metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})


def save_rescorer(path: str | os.PathLike[str], rescorer: Rescorer) -> Path:
    """Write ``rescorer`` to ``path`` atomically."""
    return atomic_write_bytes(path, rescorer_to_bytes(rescorer))


def _parse_metadata(metadata: dict[str, str]) -> dict[str, Any]:
    meta = metadata_object(metadata, "rescorer", REQUIRED_KEYS, FORMAT_VERSION, METADATA_KEY)
    if meta["kind"] != KIND:
        raise InvalidAdapter(f"unknown rescorer kind {meta['kind']!r}; supported: {KIND!r}")
    if meta["pooling"] not in POOLINGS:
        raise InvalidAdapter(f"pooling must be one of {list(POOLINGS)}, got {meta['pooling']!r}")
    targets, encoder, fusion = meta["targets"], meta["encoder"], meta["fusion"]
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise InvalidAdapter("metadata 'targets' must be a non-empty list of module names")
    if len(set(targets)) != len(targets):
        raise InvalidAdapter("metadata 'targets' lists a module twice")
    if not isinstance(encoder, dict) or not all(isinstance(encoder.get(k), str) for k in ("name", "fingerprint")):
        raise InvalidAdapter("metadata 'encoder' must be an object with string 'name' and 'fingerprint'")
    if not isinstance(fusion, dict) or set(fusion) != {"weight", "length_weight"}:
        raise InvalidAdapter("metadata 'fusion' must be an object with exactly 'weight' and 'length_weight'")
    for key, value in fusion.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or abs(value) > MAX_FUSION_WEIGHT:
            raise InvalidAdapter(f"fusion {key!r} must be a finite number within ±{MAX_FUSION_WEIGHT:g}, got {value!r}")
    for key in ("asr_backbone", "created_at", "creator"):
        if not isinstance(meta.get(key, ""), str):
            raise InvalidAdapter(f"metadata {key!r} must be a string")
    if not isinstance(meta.get("training", {}), dict):
        raise InvalidAdapter("metadata 'training' must be an object")
    return meta


def load_rescorer(
    source: bytes | bytearray | memoryview | str | os.PathLike[str],
    *,
    encoder: BackboneSpec | None = None,
    limits: AdapterLimits | None = None,
) -> Rescorer:
    """Load and validate a rescorer file (bytes or path); see the module docstring for the checks.

    With ``encoder`` (the text encoder's spec) the fingerprint and every LoRA module must match it.
    """
    limits = limits or AdapterLimits()
    data = _read_source(source, limits)
    header, raw_metadata = read_header(data, limits)
    meta = _parse_metadata(raw_metadata)
    config = KindConfig.from_dict(meta["lora"])
    check_limits(config, limits)
    if encoder is not None:
        check_backbone_match(meta["encoder"]["name"], meta["encoder"]["fingerprint"], encoder)
    shapes = {name: tuple(entry["shape"]) for name, entry in header.items()}
    head = {n: shapes.pop(n, None) for n in (HEAD_WEIGHT, HEAD_BIAS)}
    if head[HEAD_WEIGHT] is None or head[HEAD_BIAS] is None:
        raise InvalidAdapter(f"rescorer file lacks {HEAD_WEIGHT!r} or {HEAD_BIAS!r}")
    if len(head[HEAD_WEIGHT]) != 1 or head[HEAD_BIAS] != (1,):
        raise InvalidAdapter(f"head shapes {head[HEAD_WEIGHT]} / {head[HEAD_BIAS]}: expected [hidden] and [1]")
    groups = check_layout(get_kind("lora"), config, shapes, meta["targets"], encoder)
    if encoder is not None:
        hidden = next(iter(encoder.linear_shapes.values()))[1] if encoder.linear_shapes else None
        query = encoder.linear_shapes.get("encoder.layer.0.attention.self.query")
        hidden = query[1] if query else hidden
        if hidden is not None and head[HEAD_WEIGHT] != (hidden,):
            raise InvalidAdapter(f"head.weight has shape {head[HEAD_WEIGHT]}, the encoder's hidden size is {hidden}")
    try:
        tensors = safetensors_from_bytes(data)
    except Exception as exc:  # safetensors raises its own error types for malformed data
        raise InvalidAdapter(f"safetensors could not parse the file: {exc}") from exc
    check_finite(tensors)
    lora = Adapter(
        kind="lora", config=config,
        tensors={module: {s: tensors[n] for s, n in group.items()} for module, group in groups.items()},
        backbone_name=meta["encoder"]["name"], backbone_fingerprint=meta["encoder"]["fingerprint"],
        created_at=meta.get("created_at", ""), creator=meta.get("creator", ""),
    )
    return Rescorer(
        lora=lora, head_weight=tensors[HEAD_WEIGHT].float(), head_bias=tensors[HEAD_BIAS].float(),
        pooling=meta["pooling"], fusion=Fusion(float(meta["fusion"]["weight"]), float(meta["fusion"]["length_weight"])),
        asr_backbone=meta.get("asr_backbone", ""), training=meta.get("training", {}),
    )
