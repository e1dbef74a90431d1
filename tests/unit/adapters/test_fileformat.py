"""Adapter file: bit-exact round trip and every validation failure with a clear message."""

from __future__ import annotations

import io
import json
import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors.torch import load as safetensors_from_bytes  # safetensors only: never pickle

from splitasr.adapters import (
    Adapter,
    AdapterLimits,
    BackboneSpec,
    adapter_to_bytes,
    load_adapter,
    save_adapter,
)
from splitasr.adapters.fileformat import METADATA_KEY, AdapterTooLarge
from splitasr.errors import InvalidAdapter, TooLarge
from tests.adapter_factory import CASES, tiny_whisper

Q_PROJ = "model.encoder.layers.0.self_attn.q_proj"


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_is_bit_exact(tmp_path: Path, case: str, adapters: dict[str, Adapter], spec: BackboneSpec) -> None:
    original = adapters[case]
    path = save_adapter(tmp_path / "user.safetensors", original)
    assert [p.name for p in tmp_path.iterdir()] == ["user.safetensors"]  # no temp file left behind
    loaded = load_adapter(path, expected_backbone=spec, limits=AdapterLimits(max_rank=8, max_experts=4))
    assert (loaded.kind, loaded.config, loaded.targets) == (original.kind, original.config, original.targets)
    assert (loaded.backbone_name, loaded.backbone_fingerprint) == (original.backbone_name, original.backbone_fingerprint)
    assert (loaded.created_at, loaded.creator) == (original.created_at, "tests")
    flat_a, flat_b = original.flat_tensors(), loaded.flat_tensors()
    assert flat_a.keys() == flat_b.keys()
    for name, tensor in flat_a.items():
        assert flat_b[name].dtype == tensor.dtype and torch.equal(flat_b[name], tensor), name
    assert adapter_to_bytes(loaded) == path.read_bytes()


def test_half_precision_round_trip(adapters: dict[str, Adapter], spec: BackboneSpec) -> None:
    adapter = adapters["lora"]
    half = Adapter(**{**adapter.__dict__, "tensors": {
        m: {s: t.to(torch.bfloat16) for s, t in g.items()} for m, g in adapter.tensors.items()}})
    loaded = load_adapter(adapter_to_bytes(half), expected_backbone=spec)
    assert loaded.tensors[Q_PROJ]["lora_A"].dtype == torch.bfloat16
    assert torch.equal(loaded.tensors[Q_PROJ]["lora_A"], half.tensors[Q_PROJ]["lora_A"])


# --- crafting broken files -------------------------------------------------------------------------

def _split(data: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def _join(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def _edit_meta(edit: Callable[[dict], object]) -> Callable[[bytes], bytes]:
    def craft(data: bytes) -> bytes:
        header, body = _split(data)
        meta = json.loads(header["__metadata__"][METADATA_KEY])
        edit(meta)
        header["__metadata__"][METADATA_KEY] = json.dumps(meta)
        return _join(header, body)
    return craft


def _with_tensors(edit: Callable[[dict[str, torch.Tensor]], object]) -> Callable[[bytes], bytes]:
    def craft(data: bytes) -> bytes:
        header, _ = _split(data)
        tensors = safetensors_from_bytes(data)
        edit(tensors)
        return safetensors.torch.save(tensors, metadata=header["__metadata__"])
    return craft


def _raw_metadata(value: str | None) -> Callable[[bytes], bytes]:
    def craft(data: bytes) -> bytes:
        header, body = _split(data)
        if value is None:
            del header["__metadata__"]
        else:
            header["__metadata__"][METADATA_KEY] = value
        return _join(header, body)
    return craft


def _rename_module(old: str, new: str) -> Callable[[bytes], bytes]:
    def craft(data: bytes) -> bytes:
        header, body = _split(data)
        header = {k.replace(old, new): v for k, v in header.items()}
        meta = json.loads(header["__metadata__"][METADATA_KEY])
        meta["targets"] = [new if t == old else t for t in meta["targets"]]
        header["__metadata__"][METADATA_KEY] = json.dumps(meta)
        return _join(header, body)
    return craft


def _set(key: str, value: object) -> Callable[[dict], object]:
    return lambda d: d.__setitem__(key, value)


def _torch_saved(_: bytes) -> bytes:
    buffer = io.BytesIO()
    torch.save({"weight": torch.zeros(3)}, buffer)
    return buffer.getvalue()


BROKEN: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "too short": (lambda d: d[:5], "too short to be a safetensors file"),
    "truncated data": (lambda d: d[: len(d) - 100], "outside the .*-byte data section"),
    "header past end": (lambda d: struct.pack("<Q", len(d)) + d[8:], "points past the end"),
    "oversized header": (lambda d: struct.pack("<Q", 2 << 20) + d[8:], "exceeds the limit of 1048576 bytes"),
    "header not json": (lambda d: struct.pack("<Q", 4) + b"{{{{" + d[12:], "not valid UTF-8 JSON"),
    "duplicate key": (lambda d: _join_dup(d), "duplicate key"),
    "pickle renamed": (lambda d: pickle.dumps({"weight": [1.0] * 100}), "header length"),
    "torch.save renamed": (_torch_saved, "header length"),
    "wrong shape": (_with_tensors(lambda t: t.__setitem__(f"{Q_PROJ}.lora_A", t[f"{Q_PROJ}.lora_A"][:3].clone())),
                    (r"tensor '.*q_proj.lora_A' has shape \(3, 64\) but module '.*q_proj' \(64×64\) with rank 4 "
                    r"expects \(4, 64\)")),
    "int dtype": (_with_tensors(lambda t: t.__setitem__(f"{Q_PROJ}.lora_B", t[f"{Q_PROJ}.lora_B"].to(torch.int32))),
                  "has dtype I32; allowed"),
    "nan": (_with_tensors(lambda t: t[f"{Q_PROJ}.lora_A"].__setitem__((0, 0), float("nan"))), "non-finite"),
    "inf": (_with_tensors(lambda t: t[f"{Q_PROJ}.lora_B"].__setitem__((1, 1), float("inf"))), "non-finite"),
    "missing tensor": (_with_tensors(lambda t: t.pop(f"{Q_PROJ}.lora_B")), "missing tensor"),
    "stray tensor": (_with_tensors(lambda t: t.__setitem__("extra", torch.zeros(2))), "is not '<module>.<suffix>'"),
    "rank over limit": (_edit_meta(lambda m: m["hyperparameters"].__setitem__("r", 128)), "rank 128 exceeds the limit 64"),
    "bad hyper-parameter": (_edit_meta(lambda m: m["hyperparameters"].__setitem__("alpha", "big")), "alpha must be a number"),
    "metadata not json": (_raw_metadata("{not json"), "metadata is not valid JSON"),
    "metadata missing": (_raw_metadata(None), "no 'splitasr' entry"),
    "metadata key missing": (_edit_meta(lambda m: m.pop("targets")), r"missing required key\(s\) \['targets'\]"),
    "format version": (_edit_meta(_set("format_version", 99)), "unknown adapter format_version 99"),
    "unknown kind": (_edit_meta(_set("kind", "dora")), "unknown adapter kind 'dora'"),
    "targets mismatch": (_edit_meta(lambda m: m["targets"].pop()), "not in the metadata targets"),
    "unknown module": (_rename_module(Q_PROJ, "model.encoder.layers.9.self_attn.q_proj"),
                       "unknown target module 'model.encoder.layers.9.self_attn.q_proj'"),
}


def _join_dup(data: bytes) -> bytes:
    header, body = _split(data)
    raw = json.dumps(header).encode()
    raw = raw[:-1] + b', "__metadata__": {}}'
    return struct.pack("<Q", len(raw)) + raw + body


@pytest.mark.parametrize("problem", list(BROKEN))
def test_broken_files_are_rejected(problem: str, adapters: dict[str, Adapter], spec: BackboneSpec) -> None:
    craft, message = BROKEN[problem]
    data = craft(adapter_to_bytes(adapters["lora"]))
    with pytest.raises(InvalidAdapter, match=message):
        load_adapter(data, expected_backbone=spec)


def test_expert_limit_and_file_size_limit(adapters: dict[str, Adapter], spec: BackboneSpec, tmp_path: Path) -> None:
    with pytest.raises(InvalidAdapter, match="3 experts exceed the limit 2"):
        load_adapter(adapter_to_bytes(adapters["saml"]), expected_backbone=spec, limits=AdapterLimits(max_experts=2))
    path = save_adapter(tmp_path / "a.safetensors", adapters["lora"])
    small = AdapterLimits(max_file_bytes=1000)
    for source in (path, path.read_bytes()):
        with pytest.raises(AdapterTooLarge, match="over the limit of 1000") as info:
            load_adapter(source, limits=small)
        assert isinstance(info.value, TooLarge) and info.value.http_status == 413
    with pytest.raises(InvalidAdapter, match="cannot read adapter file 'missing.safetensors'"):
        load_adapter(tmp_path / "missing.safetensors")


def test_wrong_backbone_names_both(adapters: dict[str, Adapter]) -> None:
    other = BackboneSpec.from_model("other-random", tiny_whisper(seed=1))
    with pytest.raises(InvalidAdapter, match="trained for backbone 'tiny-random'.*this server runs 'other-random'"):
        load_adapter(adapter_to_bytes(adapters["lora"]), expected_backbone=other)


def test_without_backbone_checks_internal_consistency(adapters: dict[str, Adapter]) -> None:
    loaded = load_adapter(adapter_to_bytes(adapters["glora-output"]))
    assert loaded.config == adapters["glora-output"].config
    bad = BROKEN["wrong shape"][0](adapter_to_bytes(adapters["lora"]))
    with pytest.raises(InvalidAdapter, match="has shape"):
        load_adapter(bad)
