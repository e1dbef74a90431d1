"""PEFT LoRA interop: import a PEFT LoRA adapter into our format, export a ``lora`` adapter to PEFT.

Import accepts a folder or a ``.zip`` (path or bytes) holding ``adapter_config.json`` and
``adapter_model.safetensors`` (at the root or in one top-level folder). Zip members are never
extracted to disk: names with absolute paths, ``..``, backslashes or drive letters, symlinks and
encrypted members reject the archive; declared sizes and the compression ratio of every member are
checked before anything is decompressed, and reads are capped at the declared size.

Key mapping: ``base_model.model.<module>.lora_{A,B}[.<adapter>].weight`` → ``<module>.lora_{A,B}``
(``<module>`` gets a ``model.`` prefix when the PEFT model wrapped ``WhisperModel`` instead of
``WhisperForConditionalGeneration``). ``use_rslora`` is folded into alpha (α' = α·√r). Options that
change the math or the base weights (DoRA, rank/alpha patterns, biases, modules_to_save, PiSSA/OLoRA/
LoftQ-style inits, ...) are rejected with a message naming them.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import safetensors.torch
import torch
from safetensors.torch import load as safetensors_from_bytes  # safetensors only: never pickle

from ..errors import InvalidAdapter
from ..fileio import atomic_write_bytes
from .adapter import (
    Adapter,
    AdapterLimits,
    BackboneSpec,
    check_finite,
    check_layout,
    check_limits,
)
from .fileformat import read_header
from .kinds import KindConfig, get_kind

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
MAX_CONFIG_BYTES = 1 << 20
PEFT_PREFIX = "base_model.model."
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[A-Za-z0-9_\-]+)?\.weight$")

# Options read or harmless for inference (any value accepted).
_ACCEPTED = {
    "peft_type", "task_type", "peft_version", "auto_mapping", "base_model_name_or_path", "revision",
    "inference_mode", "r", "lora_alpha", "target_modules", "exclude_modules", "lora_dropout",
    "init_lora_weights", "layers_to_transform", "layers_pattern", "use_rslora", "qalora_group_size",
    "megatron_core", "eva_config", "ensure_weight_tying",
}
# Init methods that rewrite the base weights: the adapter is meaningless on the original backbone.
_BASE_MODIFYING_INITS = ("pissa", "olora", "loftq", "corda", "lora_ga")


def _neutral(value: Any) -> bool:
    return value is None or value is False or value in ({}, [], "none", "")


def _unsafe_member(name: str) -> bool:
    path = PurePosixPath(name)
    return (
        "\\" in name or name.startswith("/") or ".." in path.parts
        or (len(name) > 1 and name[1] == ":") or "\x00" in name
    )


def _read_zip(zf: zipfile.ZipFile, limits: AdapterLimits) -> dict[str, bytes]:
    infos = zf.infolist()
    if len(infos) > limits.max_zip_members:
        raise InvalidAdapter(f"zip has {len(infos)} members, over the limit of {limits.max_zip_members}")
    total = 0
    for info in infos:
        if _unsafe_member(info.filename):
            raise InvalidAdapter(f"zip member {info.filename!r} has an unsafe path (absolute or '..')")
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise InvalidAdapter(f"zip member {info.filename!r} is a symlink")
        if info.flag_bits & 0x1:
            raise InvalidAdapter(f"zip member {info.filename!r} is encrypted")
        ratio = info.file_size / max(info.compress_size, 1)
        if ratio > limits.max_zip_ratio:
            raise InvalidAdapter(
                f"zip member {info.filename!r} expands {ratio:.0f}× (limit {limits.max_zip_ratio:.0f}×): "
                f"rejected as a possible zip bomb"
            )
        total += info.file_size
    if total > limits.max_file_bytes + MAX_CONFIG_BYTES:
        raise InvalidAdapter(f"zip expands to {total} bytes, over the limit of {limits.max_file_bytes + MAX_CONFIG_BYTES}")
    found: dict[str, bytes] = {}
    for wanted, cap in ((CONFIG_NAME, MAX_CONFIG_BYTES), (WEIGHTS_NAME, limits.max_file_bytes)):
        matches = [i for i in infos if PurePosixPath(i.filename).name == wanted and len(PurePosixPath(i.filename).parts) <= 2]
        if len(matches) != 1:
            raise InvalidAdapter(f"zip must contain exactly one {wanted!r} (at the root or in one folder), found {len(matches)}")
        if matches[0].file_size > cap:
            raise InvalidAdapter(f"zip member {matches[0].filename!r} is {matches[0].file_size} bytes, over the limit of {cap}")
        with zf.open(matches[0]) as handle:
            content = handle.read(cap + 1)
        if len(content) > cap:
            raise InvalidAdapter(f"zip member {matches[0].filename!r} is over the limit of {cap} bytes")
        found[wanted] = content
    return found


def _read_folder(folder: Path, limits: AdapterLimits) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for wanted, cap in ((CONFIG_NAME, MAX_CONFIG_BYTES), (WEIGHTS_NAME, limits.max_file_bytes)):
        path = folder / wanted
        if not path.is_file():
            raise InvalidAdapter(f"PEFT folder has no {wanted!r}")
        if path.stat().st_size > cap:
            raise InvalidAdapter(f"{wanted!r} is {path.stat().st_size} bytes, over the limit of {cap}")
        found[wanted] = path.read_bytes()
    return found


def read_peft_files(source: str | os.PathLike[str] | bytes, limits: AdapterLimits) -> dict[str, bytes]:
    """``{adapter_config.json: bytes, adapter_model.safetensors: bytes}`` from a folder, zip path or zip bytes."""
    try:
        if isinstance(source, (bytes, bytearray)):
            if len(source) > limits.max_file_bytes + MAX_CONFIG_BYTES:
                raise InvalidAdapter(f"PEFT zip is {len(source)} bytes, over the limit")
            with zipfile.ZipFile(io.BytesIO(source)) as zf:
                return _read_zip(zf, limits)
        path = Path(source)
        if path.is_dir():
            return _read_folder(path, limits)
        with zipfile.ZipFile(path) as zf:
            return _read_zip(zf, limits)
    except zipfile.BadZipFile as exc:
        raise InvalidAdapter(f"not a valid PEFT folder or zip: {exc}") from exc
    except OSError as exc:
        raise InvalidAdapter(f"cannot read PEFT adapter: {exc.strerror or exc}") from exc


def _peft_config(raw: bytes) -> KindConfig:
    try:
        config = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidAdapter(f"{CONFIG_NAME} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise InvalidAdapter(f"{CONFIG_NAME} must be a JSON object")
    if config.get("peft_type") != "LORA":
        raise InvalidAdapter(f"only PEFT LoRA adapters can be imported, got peft_type {config.get('peft_type')!r}")
    unsupported = sorted(f"{k}={v!r}" for k, v in config.items() if k not in _ACCEPTED and not _neutral(v))
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_BASE_MODIFYING_INITS):
        unsupported.append(f"init_lora_weights={init!r} (rewrites the base weights)")
    if unsupported:
        raise InvalidAdapter(f"unsupported PEFT LoRA feature(s): {', '.join(unsupported)}")
    r, alpha = config.get("r"), config.get("lora_alpha", 8)  # PEFT's default
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise InvalidAdapter(f"PEFT config 'r' must be an integer >= 1, got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise InvalidAdapter(f"PEFT config 'lora_alpha' must be a number, got {alpha!r}")
    if config.get("use_rslora"):
        alpha = alpha * math.sqrt(r)  # rsLoRA scales by α/√r = (α·√r)/r
    return get_kind("lora").make_config(r=r, alpha=alpha)


def import_peft(
    source: str | os.PathLike[str] | bytes,
    backbone: BackboneSpec,
    *,
    limits: AdapterLimits | None = None,
    creator: str = "peft-import",
) -> Adapter:
    """Import a PEFT LoRA adapter (folder, zip path or zip bytes) as a validated ``lora`` :class:`Adapter`."""
    limits = limits or AdapterLimits()
    files = read_peft_files(source, limits)
    config = _peft_config(files[CONFIG_NAME])
    check_limits(config, limits)
    header, _ = read_header(files[WEIGHTS_NAME], limits)
    names: dict[str, str] = {}  # our name -> PEFT key
    for key in header:
        match = _KEY.match(key)
        if match is None:
            raise InvalidAdapter(
                f"unsupported PEFT tensor {key!r}: only 'base_model.model.<module>.lora_A/B.weight' of linear layers"
            )
        module = match["module"]
        if module not in backbone.linear_shapes and f"model.{module}" in backbone.linear_shapes:
            module = f"model.{module}"
        ours = f"{module}.lora_{match['ab']}"
        if ours in names:
            raise InvalidAdapter(f"PEFT tensors {names[ours]!r} and {key!r} map to the same module")
        names[ours] = key
    shapes = {ours: tuple(header[key]["shape"]) for ours, key in names.items()}
    groups = check_layout(get_kind("lora"), config, shapes, None, backbone)
    try:
        raw = safetensors_from_bytes(files[WEIGHTS_NAME])
    except Exception as exc:
        raise InvalidAdapter(f"safetensors could not parse {WEIGHTS_NAME}: {exc}") from exc
    tensors = {ours: raw[key] for ours, key in names.items()}
    check_finite(tensors)
    return Adapter(
        kind="lora",
        config=config,
        tensors={m: {s: tensors[n] for s, n in g.items()} for m, g in groups.items()},
        backbone_name=backbone.name,
        backbone_fingerprint=backbone.fingerprint,
        creator=creator,
    )


def export_peft(adapter: Adapter, directory: str | os.PathLike[str], *, base_model_name_or_path: str | None = None) -> Path:
    """Write a ``lora`` adapter as a PEFT folder that ``PeftModel.from_pretrained`` loads unchanged."""
    if adapter.kind != "lora":  # PEFT's LoRA format can only express plain LoRA
        raise InvalidAdapter(f"only plain lora adapters can be exported to PEFT, not {adapter.kind!r}")
    from peft import LoraConfig  # heavy import, only needed here

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    peft_config = LoraConfig(
        r=adapter.config.r,
        lora_alpha=adapter.config.alpha,
        target_modules=adapter.targets,  # full module names: PEFT matches them exactly
        lora_dropout=0.0,
        bias="none",
        inference_mode=True,
        base_model_name_or_path=base_model_name_or_path or adapter.backbone_name or None,
    )
    config = peft_config.to_dict()
    config = {k: (sorted(v) if isinstance(v, set) else getattr(v, "value", v)) for k, v in config.items()}
    atomic_write_bytes(out / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True).encode())
    tensors: dict[str, torch.Tensor] = {}
    for module, group in adapter.tensors.items():
        for suffix in ("lora_A", "lora_B"):
            tensors[f"{PEFT_PREFIX}{module}.{suffix}.weight"] = group[suffix].detach().to("cpu").contiguous()
    atomic_write_bytes(out / WEIGHTS_NAME, safetensors.torch.save(tensors, metadata={"format": "pt"}))
    return out
