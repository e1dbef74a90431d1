"""Hostile inputs, built from real ones: adapter files, adapter names and audio files.

Every case is ``(id, bytes, words)``: ``words`` must appear in the error message the client gets.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import wave
import zipfile
from dataclasses import replace

import numpy as np
import torch

from splitasr.adapters import BackboneSpec, adapter_to_bytes
from tests.adapter_factory import adapter_bytes, random_adapter

# -- adapter files ----------------------------------------------------------------------------------


def split(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8: 8 + n]), data[8 + n:]


def join(header: dict | list | str, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def frame(raw_header: bytes, body: bytes = b"") -> bytes:
    return struct.pack("<Q", len(raw_header)) + raw_header + body


def _edit_meta(data: bytes, edit) -> bytes:
    header, body = split(data)
    meta = json.loads(header["__metadata__"]["splitasr"])
    edit(meta)
    header["__metadata__"]["splitasr"] = json.dumps(meta)
    return join(header, body)


def _first_tensor(header: dict) -> str:
    return next(k for k in header if k != "__metadata__")


def _edit_entry(data: bytes, edit) -> bytes:
    header, body = split(data)
    edit(header[_first_tensor(header)])
    return join(header, body)


def _overlapping(data: bytes) -> bytes:
    """Two tensors of the same shape share one byte range."""
    header, body = split(data)
    names = [k for k in header if k != "__metadata__"]
    first = header[names[0]]
    same = next(n for n in names[1:] if header[n]["shape"] == first["shape"] and header[n]["dtype"] == first["dtype"])
    header[same]["data_offsets"] = list(first["data_offsets"])
    return join(header, body)


def _poke(data: bytes, value: float) -> bytes:
    """``value`` written into the first element of the first tensor."""
    header, body = split(data)
    entry = header[_first_tensor(header)]
    assert entry["dtype"] == "F32"
    start = entry["data_offsets"][0]
    return join(header, body[:start] + struct.pack("<f", value) + body[start + 4:])


def _torch_saved() -> bytes:
    buffer = io.BytesIO()
    torch.save({"weight": torch.zeros(3)}, buffer)
    return buffer.getvalue()


def _zip_bomb() -> bytes:
    """A PEFT-style zip whose weights member inflates 8 MiB from a few KiB.

    gRPC takes adapter files only ("not a safetensors header"); REST converts PEFT zips and refuses
    this one as a zip bomb before inflating anything.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("adapter_config.json", b'{"peft_type": "LORA", "r": 8}')
        zf.writestr("adapter_model.safetensors", bytes(8 << 20))
    return buffer.getvalue()


def _huge_rank(spec: BackboneSpec) -> bytes:
    return _edit_meta(adapter_bytes(spec, "lora", seed=21), lambda m: m["hyperparameters"].__setitem__("r", 1 << 20))


def _foreign_backbone(spec: BackboneSpec) -> bytes:
    adapter = replace(random_adapter(spec, "lora", seed=22), backbone_name="whisper-large-v3",
                      backbone_fingerprint="f" * 64)
    return adapter_to_bytes(adapter)


def _lying_module_shape(data: bytes) -> bytes:
    """A self-consistent file whose first tensor has the wrong inner size for the backbone."""
    header, _ = split(data)
    from safetensors.torch import load, save

    tensors = load(data)
    name = _first_tensor(header)
    tensors[name] = torch.zeros(tensors[name].shape[0], tensors[name].shape[1] + 1)
    return save(tensors, metadata=header["__metadata__"])


def _filled(spec: BackboneSpec, value: float) -> bytes:
    """A LoRA file whose every value is ``value``: finite, structurally valid."""
    adapter = random_adapter(spec, "lora", seed=24)
    tensors = {m: {k: torch.full_like(t, value) for k, t in group.items()} for m, group in adapter.tensors.items()}
    return adapter_to_bytes(replace(adapter, tensors=tensors))


def _huge_alpha(spec: BackboneSpec) -> bytes:
    adapter = random_adapter(spec, "lora", seed=25)
    return adapter_to_bytes(replace(adapter, config=replace(adapter.config, alpha=1e30)))


def _on_output_head(spec: BackboneSpec) -> bytes:
    """A LoRA on ``proj_out`` (a linear of the backbone, but the output head tied to the embedding)."""
    out_features, in_features = spec.linear_shapes["proj_out"]
    adapter = random_adapter(spec, "lora", seed=26)
    gen = torch.Generator().manual_seed(26)
    head = {"lora_A": torch.randn(8, in_features, generator=gen) * 0.02,
            "lora_B": torch.randn(out_features, 8, generator=gen) * 0.02}
    return adapter_to_bytes(replace(adapter, tensors={"proj_out": head}))


def adapter_cases(spec: BackboneSpec) -> list[tuple[str, bytes, str]]:
    """Hostile adapter files for ``spec`` and a word of the message each must get."""
    good = adapter_bytes(spec, "lora", seed=20)
    header, body = split(good)
    saml = adapter_bytes(spec, "saml", seed=23)
    return [
        ("pickle-renamed", pickle.dumps({"weight": [1.0] * 100}), "header"),
        ("torch-save-renamed", _torch_saved(), "header"),
        ("random-bytes", bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "header"),
        ("too-short", good[:5], "too short"),
        ("truncated-in-header", good[:100], "points past the end"),
        ("truncated-half", good[: len(good) // 2], "outside"),
        ("truncated-tail", good[:-3], "outside"),
        ("header-length-past-eof", struct.pack("<Q", len(good)) + good[8:], "points past the end"),
        ("header-length-100MB", struct.pack("<Q", 100 << 20) + good[8:], "exceeds the limit"),
        ("header-length-2^64-1", b"\xff" * 8 + good[8:], "exceeds the limit"),
        ("header-2MB-real-json", join({**header, "__metadata__": {**header["__metadata__"], "pad": "x" * (2 << 20)}},
                                      body), "exceeds the limit"),
        ("header-not-json", frame(b"{{{{" * 8, body), "not valid utf-8 json"),
        ("header-not-utf8", frame(b"\xff\xfe" * 8, body), "not valid utf-8 json"),
        ("header-json-array", join([1, 2, 3], body), "not a json object"),
        ("header-deep-nesting", frame(b"[" * 100_000 + b"]" * 100_000), "nested too deeply"),
        ("metadata-deep-nesting", join({**header, "__metadata__": {"splitasr": "[" * 50_000 + "]" * 50_000}}, body),
         "nested too deeply"),
        ("duplicate-keys", frame(json.dumps(header).encode()[:-1] + b', "__metadata__": {}}', body), "duplicate key"),
        ("overlapping-offsets", _overlapping(good), "offset"),
        ("offsets-past-data", _edit_entry(good, lambda e: e.__setitem__("data_offsets", [0, 1 << 40])), "outside"),
        ("negative-offsets", _edit_entry(good, lambda e: e.__setitem__("data_offsets", [-8, 0])), "outside"),
        ("shape-lies", _edit_entry(good, lambda e: e.__setitem__("shape", [99999, 64])), "do not match"),
        ("shape-negative", _edit_entry(good, lambda e: e.__setitem__("shape", [-1, 64])), "malformed shape"),
        ("dtype-lies-f16", _edit_entry(good, lambda e: e.__setitem__("dtype", "F16")), "do not match"),
        ("dtype-int", _edit_entry(good, lambda e: e.__setitem__("dtype", "I32")), "dtype"),
        ("dtype-unknown", _edit_entry(good, lambda e: e.__setitem__("dtype", "F128")), "dtype"),
        ("nan", _poke(good, float("nan")), "non-finite"),
        ("inf", _poke(good, float("inf")), "non-finite"),
        ("huge-rank", _huge_rank(spec), "rank"),
        ("rank-zero", _edit_meta(good, lambda m: m["hyperparameters"].__setitem__("r", 0)), "r"),
        ("huge-expert-count", _edit_meta(saml, lambda m: m["hyperparameters"].__setitem__("experts", 100_000)),
         "expert"),
        ("other-backbone", _foreign_backbone(spec), "whisper-large-v3"),
        ("module-shape-lies", _lying_module_shape(good), "expects"),
        ("unknown-module", _edit_meta(good, lambda m: m["targets"].append("model.encoder.layers.99.fc1")), "target"),
        ("unknown-kind", _edit_meta(good, lambda m: m.__setitem__("kind", "dora")), "unknown adapter kind"),
        ("format-version", _edit_meta(good, lambda m: m.__setitem__("format_version", 99)), "format_version"),
        ("no-metadata", join({k: v for k, v in header.items() if k != "__metadata__"}, body), "metadata"),
        ("peft-zip-bomb", _zip_bomb(), "header"),  # over gRPC; REST_WORDS has what REST says
        # finite and well-formed, but serving them would overflow
        ("every-weight-1e30", _filled(spec, 1e30), "magnitude 1e+30"),
        ("every-weight-65504", _filled(spec, 65504.0), "over the limit of 16384"),
        ("every-weight-1", _filled(spec, 1.0), "over the limit of 32"),
        ("alpha-1e30", _huge_alpha(spec), "alpha"),
        ("output-head-proj_out", _on_output_head(spec), "output head"),
    ]


# -- adapter names ----------------------------------------------------------------------------------

HOSTILE_NAMES = [
    "../../etc/passwd", "..", ".", "a/b", "a\\b", "/abs", "%2e%2e%2fx", "..%2f..%2f", ".hidden", "-dash",
    "name\x00nul", "bad\nname", "tab\tname", "esc\x1b[31mred", "rtl\u202eexe.fdp", "ｆｕｌｌｗｉｄｔｈ", "café",
    " space", "x" * 65, "y" * 10_000, "",
]


# -- audio ------------------------------------------------------------------------------------------


def wav_header_rate(rate: int, seconds: float = 1.0, channels: int = 1) -> bytes:
    """A PCM16 WAV with any rate in its header (the ``wave`` module accepts 1 Hz)."""
    frames = max(1, int(rate * seconds))
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes(2 * channels * frames))
    return buffer.getvalue()


def float_wav(samples: np.ndarray, rate: int = 16_000) -> bytes:
    """An IEEE-float WAV (format tag 3): can carry NaN and Inf, unlike PCM."""
    data = np.asarray(samples, dtype="<f4")
    channels = 1 if data.ndim == 1 else data.shape[1]
    payload = data.tobytes()
    fmt = struct.pack("<HHIIHH", 3, channels, rate, rate * 4 * channels, 4 * channels, 32)
    return (b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(payload)) + b"WAVE"
            + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(payload)) + payload)


def encode(samples: np.ndarray, rate: int, fmt: str, channels: int = 1) -> bytes:
    """Encode float samples with soundfile (WAV, FLAC, OGG/opus ...)."""
    import soundfile

    buffer = io.BytesIO()
    subtype = {"FLAC": "PCM_16", "WAV": "PCM_16", "OGG": "OPUS"}[fmt]
    soundfile.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def silence_flac(seconds: float, rate: int = 8_000) -> bytes:
    """``seconds`` of digital silence as FLAC, written in blocks (two hours are ~100 KB)."""
    import soundfile

    buffer = io.BytesIO()
    block = np.zeros(rate * 60, dtype=np.int16)
    with soundfile.SoundFile(buffer, "w", rate, 1, format="FLAC", subtype="PCM_16") as out:
        left = int(seconds * rate)
        while left > 0:
            out.write(block[: min(left, len(block))])
            left -= len(block)
    return buffer.getvalue()


def without_flac_length(data: bytes) -> bytes:
    """The same FLAC with STREAMINFO's total-samples field zeroed: the header no longer tells the length."""
    assert data[:4] == b"fLaC"
    # STREAMINFO starts at 8; total samples are the low 36 bits of the 8 bytes at offset 8 + 10
    at = 8 + 10
    (packed,) = struct.unpack(">Q", data[at: at + 8])
    packed &= ~((1 << 36) - 1)
    return data[:at] + struct.pack(">Q", packed) + data[at + 8:]
