"""The adapter file: one ``.safetensors`` file per adapter, validated on every load.

Layout: tensors are named after the backbone module they attach to plus a kind suffix
(``model.decoder.layers.0.self_attn.q_proj.lora_A``), adapter-level tensors have fixed names
(``router.weight``). The safetensors ``__metadata__`` holds one key, ``splitasr``, whose value is a JSON
string::

    {"format_version": 1, "kind": "glora",
     "hyperparameters": {"r": 8, "alpha": 16.0, "gate": "lowrank"},
     "targets": ["model.decoder.layers.0.self_attn.q_proj", ...],
     "backbone": {"name": "whisper-tiny.en", "fingerprint": "<sha256 hex>"},
     "created_at": "2026-11-22T10:00:00+00:00", "creator": "splitasr train"}

Loading never unpickles and trusts nothing before checking it, in this order: total size; the 8-byte
header length (bounded, inside the file); the header JSON (no duplicate keys; per tensor an allowed
dtype, a shape and offsets inside the data that match the shape); the metadata (known format version
and kind, valid hyper-parameters, rank/expert limits, backbone fingerprint); names and shapes against
the kind and the backbone's modules (only layers the backbone can adapt: never the output head, and
on a server only its configured target layers); only then the tensor bytes (safetensors), every value
finite, and finally magnitudes that cannot overflow at use (:mod:`splitasr.adapters.bounds`). Each failure raises :class:`InvalidAdapter` naming what is wrong.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors.torch import load as safetensors_from_bytes  # safetensors only: never pickle

from ..errors import InvalidAdapter, TooLarge
from ..fileio import atomic_write_bytes
from .adapter import (
    Adapter,
    AdapterLimits,
    BackboneSpec,
    check_backbone_match,
    check_finite,
    check_layout,
    check_limits,
)
from .bounds import check_magnitudes
from .kinds import get_kind

FORMAT_VERSION = 1
METADATA_KEY = "splitasr"
REQUIRED_KEYS = ("format_version", "kind", "hyperparameters", "targets", "backbone")
DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
}
_HEADER_LENGTH_BYTES = 8


class AdapterTooLarge(InvalidAdapter, TooLarge):
    """An adapter file over the size limit (an invalid adapter, reported as HTTP 413)."""

    http_status = 413
    code = "payload_too_large"


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidAdapter(f"duplicate key {key!r} in the safetensors header")
        result[key] = value
    return result


def read_header(data: bytes, limits: AdapterLimits) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Parse and bound-check the safetensors header: (tensor entries by name, ``__metadata__``)."""
    if len(data) > limits.max_file_bytes:
        raise AdapterTooLarge(f"adapter file is {len(data)} bytes, over the limit of {limits.max_file_bytes}")
    if len(data) < _HEADER_LENGTH_BYTES:
        raise InvalidAdapter(f"file is only {len(data)} bytes: too short to be a safetensors file")
    (header_len,) = struct.unpack("<Q", data[:_HEADER_LENGTH_BYTES])
    if header_len > limits.max_header_bytes:
        raise InvalidAdapter(
            f"safetensors header length {header_len} exceeds the limit of {limits.max_header_bytes} bytes "
            f"(not a safetensors file?)"
        )
    if _HEADER_LENGTH_BYTES + header_len > len(data):
        raise InvalidAdapter(
            f"safetensors header length {header_len} points past the end of the file "
            f"({len(data)} bytes in all; truncated?)"
        )
    try:
        header = json.loads(
            data[_HEADER_LENGTH_BYTES : _HEADER_LENGTH_BYTES + header_len].decode("utf-8"),
            object_pairs_hook=_no_duplicates,
        )
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidAdapter(f"safetensors header is not valid UTF-8 JSON: {exc}") from exc
    except RecursionError:  # e.g. 100 000 nested brackets: valid JSON that no header needs
        raise InvalidAdapter("safetensors header JSON is nested too deeply") from None
    if not isinstance(header, dict):
        raise InvalidAdapter("safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InvalidAdapter("safetensors '__metadata__' must map strings to strings")
    if len(header) > limits.max_tensors:
        raise InvalidAdapter(f"file holds {len(header)} tensors, over the limit of {limits.max_tensors}")
    data_len = len(data) - _HEADER_LENGTH_BYTES - header_len
    for name, entry in header.items():
        _check_entry(name, entry, data_len)
    return header, metadata


def _check_entry(name: str, entry: Any, data_len: int) -> None:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise InvalidAdapter(f"tensor {name!r} has a malformed header entry")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPES:
        raise InvalidAdapter(f"tensor {name!r} has dtype {dtype}; allowed: {sorted(DTYPES)}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InvalidAdapter(f"tensor {name!r} has a malformed shape {shape!r}")
    if (
        not isinstance(offsets, list) or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= data_len
    ):
        raise InvalidAdapter(f"tensor {name!r} has data offsets {offsets!r} outside the {data_len}-byte data section")
    if offsets[1] - offsets[0] != math.prod(shape) * DTYPES[dtype][1]:
        raise InvalidAdapter(f"tensor {name!r}: {offsets[1] - offsets[0]} data bytes do not match shape {shape} {dtype}")


def metadata_object(metadata: Mapping[str, str], what: str, required: Sequence[str], version: int,
                    key: str = METADATA_KEY) -> dict[str, Any]:
    """The SplitASR metadata JSON (under ``key``) of a ``what`` file ("adapter", "rescorer"): an object
    with the ``required`` keys and format ``version``. Any defect is an :class:`InvalidAdapter` that says which."""
    raw = metadata.get(key)
    if raw is None:
        raise InvalidAdapter(f"metadata has no {key!r} entry (not a SplitASR {what} file)")
    try:
        meta = json.loads(raw, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise InvalidAdapter(f"{what} metadata is not valid JSON: {exc}") from exc
    except RecursionError:
        raise InvalidAdapter(f"{what} metadata JSON is nested too deeply") from None
    if not isinstance(meta, dict):
        raise InvalidAdapter(f"{what} metadata must be a JSON object")
    missing = [k for k in required if k not in meta]
    if missing:
        raise InvalidAdapter(f"{what} metadata is missing required key(s) {missing}")
    if meta["format_version"] != version or isinstance(meta["format_version"], bool):
        raise InvalidAdapter(f"unknown {what} format_version {meta['format_version']!r}; supported: {version}")
    return meta


def parse_metadata(metadata: Mapping[str, str]) -> dict[str, Any]:
    """The SplitASR metadata JSON, with required keys and a known format version."""
    meta = metadata_object(metadata, "adapter", REQUIRED_KEYS, FORMAT_VERSION)
    targets, backbone = meta["targets"], meta["backbone"]
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise InvalidAdapter("metadata 'targets' must be a non-empty list of module names")
    if len(set(targets)) != len(targets):
        raise InvalidAdapter("metadata 'targets' lists a module twice")
    if not isinstance(backbone, dict) or not all(isinstance(backbone.get(k), str) for k in ("name", "fingerprint")):
        raise InvalidAdapter("metadata 'backbone' must be an object with string 'name' and 'fingerprint'")
    for key in ("created_at", "creator"):
        if not isinstance(meta.get(key, ""), str):
            raise InvalidAdapter(f"metadata {key!r} must be a string")
    return meta


def build_metadata(adapter: Adapter) -> dict[str, Any]:
    """The metadata JSON object for ``adapter``."""
    return {
        "format_version": FORMAT_VERSION,
        "kind": adapter.kind,
        "hyperparameters": adapter.config.to_dict(),
        "targets": adapter.targets,
        "backbone": {"name": adapter.backbone_name, "fingerprint": adapter.backbone_fingerprint},
        "created_at": adapter.created_at,
        "creator": adapter.creator,
    }


def adapter_to_bytes(adapter: Adapter) -> bytes:
    """Serialise ``adapter`` to the bytes of a ``.safetensors`` adapter file."""
    get_kind(adapter.kind)
    tensors = {}
    for name, tensor in adapter.flat_tensors().items():
        if tensor.dtype not in {dt for dt, _ in DTYPES.values()}:
            raise InvalidAdapter(f"tensor {name!r} has dtype {tensor.dtype}; allowed: float32, float16, bfloat16")
        tensors[name] = tensor.detach().to("cpu").contiguous()
    metadata = {METADATA_KEY: json.dumps(build_metadata(adapter), sort_keys=True)}
    return safetensors.torch.save(tensors, metadata=metadata)


def save_adapter(path: str | os.PathLike[str], adapter: Adapter) -> Path:
    """Write ``adapter`` to ``path`` (``.safetensors``) atomically; returns the path."""
    return atomic_write_bytes(path, adapter_to_bytes(adapter))


def _read_source(source: bytes | bytearray | memoryview | str | os.PathLike[str], limits: AdapterLimits) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    path = Path(source)
    try:
        size = path.stat().st_size
        if size > limits.max_file_bytes:
            raise AdapterTooLarge(f"adapter file {path.name!r} is {size} bytes, over the limit of {limits.max_file_bytes}")
        with path.open("rb") as handle:
            return handle.read(limits.max_file_bytes + 1)
    except OSError as exc:
        raise InvalidAdapter(f"cannot read adapter file {path.name!r}: {exc.strerror or exc}") from exc


def load_adapter(
    source: bytes | bytearray | memoryview | str | os.PathLike[str],
    *,
    expected_backbone: BackboneSpec | None = None,
    limits: AdapterLimits | None = None,
) -> Adapter:
    """Load and fully validate an adapter file (bytes or path); see the module docstring for the checks.

    With ``expected_backbone`` the fingerprint must match and every tensor must fit a linear module of
    that backbone; without it only the file's internal consistency is checked.
    """
    limits = limits or AdapterLimits()
    data = _read_source(source, limits)
    header, raw_metadata = read_header(data, limits)
    meta = parse_metadata(raw_metadata)
    kind = get_kind(meta["kind"])
    config = kind.config_class.from_dict(meta["hyperparameters"])
    check_limits(config, limits)
    backbone = meta["backbone"]
    if expected_backbone is not None:
        check_backbone_match(backbone["name"], backbone["fingerprint"], expected_backbone)
    shapes = {name: tuple(entry["shape"]) for name, entry in header.items()}
    groups = check_layout(kind, config, shapes, meta["targets"], expected_backbone)
    try:
        tensors = safetensors_from_bytes(data)
    except Exception as exc:  # safetensors raises its own error types for malformed data
        raise InvalidAdapter(f"safetensors could not parse the file: {exc}") from exc
    check_finite(tensors)
    module_names = {n for group in groups.values() for n in group.values()}
    adapter = Adapter(
        kind=kind.name,
        config=config,
        tensors={module: {s: tensors[n] for s, n in group.items()} for module, group in groups.items()},
        global_tensors={n: t for n, t in tensors.items() if n not in module_names},
        backbone_name=backbone["name"],
        backbone_fingerprint=backbone["fingerprint"],
        created_at=meta.get("created_at", ""),
        creator=meta.get("creator", ""),
    )
    check_magnitudes(kind, config, adapter.tensors, adapter.global_tensors)
    return adapter
