"""Read CTranslate2 / faster-whisper Whisper checkpoints and convert them to transformers format.

The ``model.bin`` layout (little endian, binary versions 1-6)::

    u32 binary_version
    str spec_name; u32 spec_revision            (version >= 2)   str = u16 length incl. NUL, bytes
    u32 num_variables, then per variable:
      str name; u8 rank; u32 dims[rank]
      u8 dtype; u32 num_bytes; bytes           (version >= 4; older files store float32 only)
    u32 num_aliases, then per alias: str alias; str target   (version >= 3)

Reading never executes anything from the file: it is plain bytes to numpy arrays.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import BackboneUnavailable

# CTranslate2 dtype codes
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: None}  # 5 = bfloat16
_MAX_VARIABLES = 100_000
_MAX_RANK = 8


class _Reader:
    def __init__(self, fh: BinaryIO, source: str):
        self.fh = fh
        self.source = source

    def read(self, n: int) -> bytes:
        data = self.fh.read(n)
        if len(data) != n:
            raise BackboneUnavailable(f"{self.source}: truncated CTranslate2 model file")
        return data

    def u8(self) -> int:
        return self.read(1)[0]

    def u16(self) -> int:
        return struct.unpack("<H", self.read(2))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.read(4))[0]

    def string(self) -> str:
        n = self.u16()
        return self.read(n).rstrip(b"\0").decode("utf-8")


def read_model_bin(parts: Iterable[str | Path]) -> tuple[str, dict[str, np.ndarray]]:
    """Parse a CTranslate2 ``model.bin`` (possibly split in parts, concatenated in order).

    Returns the spec name and a dict of variables (aliases resolved). bfloat16 is widened to float32.
    """
    paths = [Path(p) for p in parts]
    source = str(paths[0])
    fh: BinaryIO
    if len(paths) == 1:
        fh = open(paths[0], "rb")  # noqa: SIM115 - closed by the caller, like the BytesIO
    else:
        fh = io.BytesIO(b"".join(p.read_bytes() for p in paths))
    with fh:
        r = _Reader(fh, source)
        version = r.u32()
        if not 1 <= version <= 6:
            raise BackboneUnavailable(f"{source}: unsupported CTranslate2 binary version {version}")
        spec_name = ""
        if version >= 2:
            spec_name = r.string()
            r.u32()  # spec revision
        count = r.u32()
        if count > _MAX_VARIABLES:
            raise BackboneUnavailable(f"{source}: implausible variable count {count}")
        variables: dict[str, np.ndarray] = {}
        for _ in range(count):
            name = r.string()
            rank = r.u8()
            if rank > _MAX_RANK:
                raise BackboneUnavailable(f"{source}: variable {name!r} has rank {rank}")
            dims = [r.u32() for _ in range(rank)]
            if version >= 4:
                code = r.u8()
                nbytes = r.u32()
            else:
                code, nbytes = 0, 4 * int(np.prod(dims, dtype=np.int64))
            raw = r.read(nbytes)
            variables[name] = _to_array(raw, code, dims, name, source)
        if version >= 3:
            for _ in range(r.u32()):
                alias, target = r.string(), r.string()
                if target in variables:
                    variables[alias] = variables[target]
    return spec_name, variables


def _to_array(raw: bytes, code: int, dims: list[int], name: str, source: str) -> np.ndarray:
    if code not in _DTYPES:
        raise BackboneUnavailable(f"{source}: variable {name!r} has unknown dtype code {code}")
    if code == 5:  # bfloat16: the high half of a float32
        arr = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
    else:
        arr = np.frombuffer(raw, dtype=_DTYPES[code])
    if arr.size != int(np.prod(dims, dtype=np.int64)):
        raise BackboneUnavailable(f"{source}: variable {name!r} size does not match its shape {dims}")
    return arr.reshape(dims)


def write_model_bin(path: str | Path, spec_name: str, variables: dict[str, np.ndarray]) -> None:
    """Write a version-6 ``model.bin`` (used by tests to build small checkpoints)."""
    codes = {np.dtype(v): k for k, v in _DTYPES.items() if v is not None}

    def string(s: str) -> bytes:
        b = s.encode() + b"\0"
        return struct.pack("<H", len(b)) + b

    out = [struct.pack("<I", 6), string(spec_name), struct.pack("<I", 1), struct.pack("<I", len(variables))]
    for name, arr in variables.items():
        arr = np.asarray(arr, order="C")
        out += [string(name), struct.pack("<B", arr.ndim), struct.pack(f"<{arr.ndim}I", *arr.shape)]
        out += [struct.pack("<B", codes[arr.dtype]), struct.pack("<I", arr.nbytes), arr.tobytes()]
    out.append(struct.pack("<I", 0))
    Path(path).write_bytes(b"".join(out))


def _split_rows(arr: np.ndarray, parts: int) -> list[np.ndarray]:
    return np.split(arr, parts, axis=0)


def whisper_state_dict(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Map CTranslate2 Whisper variable names to ``WhisperForConditionalGeneration`` ones."""
    sd: dict[str, np.ndarray] = {}

    def linear(dst: str, src: str) -> None:
        sd[f"{dst}.weight"] = variables[f"{src}/weight"]
        if f"{src}/bias" in variables:
            sd[f"{dst}.bias"] = variables[f"{src}/bias"]

    def norm(dst: str, src: str) -> None:
        sd[f"{dst}.weight"] = variables[f"{src}/gamma"]
        sd[f"{dst}.bias"] = variables[f"{src}/beta"]

    def fused(dst_names: list[str], src: str) -> None:
        weights = _split_rows(variables[f"{src}/weight"], len(dst_names))
        biases = _split_rows(variables[f"{src}/bias"], len(dst_names))
        for name, w, b in zip(dst_names, weights, biases):
            sd[f"{name}.weight"] = w
            if name.endswith("k_proj"):
                # transformers' k_proj has no bias; CTranslate2 stores an all-zero slice for it.
                if np.any(b != 0):
                    raise BackboneUnavailable(f"{src}: non-zero key bias cannot be represented")
            else:
                sd[f"{name}.bias"] = b

    for side in ("encoder", "decoder"):
        n_layers = sum(1 for k in variables if k.startswith(f"{side}/layer_") and k.endswith("ffn/linear_0/weight"))
        for i in range(n_layers):
            src, dst = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            attn = [f"{dst}.self_attn.{p}_proj" for p in ("q", "k", "v")]
            fused(attn, f"{src}/self_attention/linear_0")
            linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
            norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
            if side == "decoder":
                linear(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
                fused([f"{dst}.encoder_attn.k_proj", f"{dst}.encoder_attn.v_proj"], f"{src}/attention/linear_1")
                linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
                norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
            linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
            linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
            norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
        norm(f"model.{side}.layer_norm", f"{side}/layer_norm")
    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    sd["model.encoder.embed_positions.weight"] = variables["encoder/position_encodings/encodings"]
    sd["model.decoder.embed_tokens.weight"] = variables["decoder/embeddings/weight"]
    sd["model.decoder.embed_positions.weight"] = variables["decoder/position_encodings/encodings"]
    return sd


def whisper_dimensions(variables: dict[str, np.ndarray]) -> dict[str, int]:
    """Model dimensions read off tensor shapes and the ``num_heads`` scalars."""

    def count(side: str) -> int:
        return sum(1 for k in variables if k.startswith(f"{side}/layer_") and k.endswith("ffn/linear_0/weight"))

    conv1 = variables["encoder/conv1/weight"]
    return {
        "d_model": int(conv1.shape[0]),
        "num_mel_bins": int(conv1.shape[1]),
        "encoder_layers": count("encoder"),
        "decoder_layers": count("decoder"),
        "encoder_attention_heads": int(variables["encoder/num_heads"]),
        "decoder_attention_heads": int(variables["decoder/num_heads"]),
        "encoder_ffn_dim": int(variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "decoder_ffn_dim": int(variables["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "vocab_size": int(variables["decoder/embeddings/weight"].shape[0]),
        "max_source_positions": int(variables["encoder/position_encodings/encodings"].shape[0]),
        "max_target_positions": int(variables["decoder/position_encodings/encodings"].shape[0]),
    }


def _special_ids(tokenizer_json: dict) -> dict[str, int]:
    return {t["content"]: int(t["id"]) for t in tokenizer_json.get("added_tokens", [])}


def convert_whisper_dir(src_dir: str | Path, out_dir: str | Path, *, model_bin_parts: list[Path] | None = None) -> Path:
    """Convert a CTranslate2 Whisper directory to a transformers directory (written atomically).

    ``src_dir`` must hold ``config.json`` and ``tokenizer.json``; the weights are ``model.bin`` or the
    given ``model_bin_parts`` (a split ``model.bin``, concatenated in order).
    """
    import json
    import os
    import shutil
    import tempfile

    import torch
    from safetensors.torch import save_file
    from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor

    src, out = Path(src_dir), Path(out_dir)
    parts = model_bin_parts or [src / "model.bin"]
    for needed in [src / "config.json", src / "tokenizer.json", *parts]:
        if not needed.is_file():
            raise BackboneUnavailable(f"{needed} is missing: not a CTranslate2 Whisper directory")
    spec, variables = read_model_bin(parts)
    if spec and spec != "WhisperSpec":
        raise BackboneUnavailable(f"{parts[0]}: spec {spec!r} is not a Whisper model")
    ct2_config = json.loads((src / "config.json").read_text())
    tok_json = json.loads((src / "tokenizer.json").read_text())
    special = _special_ids(tok_json)
    dims = whisper_dimensions(variables)
    eot = special["<|endoftext|>"]
    sot = special["<|startoftranscript|>"]
    no_ts = special["<|notimestamps|>"]
    multilingual = dims["vocab_size"] >= 51865
    config = WhisperConfig(
        **dims,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        suppress_tokens=ct2_config.get("suppress_ids", []),
        begin_suppress_tokens=ct2_config.get("suppress_ids_begin", [220, eot]),
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=True,
    )
    gen = GenerationConfig(
        decoder_start_token_id=sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=dims["max_target_positions"],
        suppress_tokens=config.suppress_tokens,
        begin_suppress_tokens=config.begin_suppress_tokens,
        no_timestamps_token_id=no_ts,
        prev_sot_token_id=special.get("<|startofprev|>"),
        max_initial_timestamp_index=50,
        alignment_heads=ct2_config.get("alignment_heads", []),
        is_multilingual=multilingual,
    )
    if multilingual:
        lang_ids = ct2_config.get("lang_ids", [])
        by_id = {v: k for k, v in special.items()}
        gen.lang_to_id = {by_id[i]: i for i in lang_ids if i in by_id}
        gen.task_to_id = {"transcribe": special["<|transcribe|>"], "translate": special["<|translate|>"]}
        # Without <|transcribe|> in the prompt, language detection decodes garbage (transformers 5.x).
        gen.forced_decoder_ids = [[1, None], [2, special["<|transcribe|>"]]]

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        state = {k: torch.from_numpy(np.array(v, dtype=np.float16)) for k, v in whisper_state_dict(variables).items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(tmp)
        gen.save_pretrained(tmp)
        WhisperFeatureExtractor(feature_size=dims["num_mel_bins"]).save_pretrained(tmp)
        shutil.copyfile(src / "tokenizer.json", tmp / "tokenizer.json")
        tok_config = {
            "tokenizer_class": "WhisperTokenizer",
            "model_max_length": dims["max_target_positions"],
            **{k: "<|endoftext|>" for k in ("bos_token", "eos_token", "unk_token", "pad_token")},
        }
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
