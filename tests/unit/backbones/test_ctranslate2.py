"""The CTranslate2 reader and converter on a small model.bin written here."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

from splitasr.backbones.ctranslate2 import convert_whisper_dir, read_model_bin, write_model_bin
from splitasr.backbones.sources import KNOWN_BACKBONES, package_dir, resolve_backbone
from splitasr.errors import BackboneUnavailable

TINY = {"d_model": 32, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
        "decoder_attention_heads": 4, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "num_mel_bins": 80,
        "max_source_positions": 1500, "max_target_positions": 448, "vocab_size": 51864}


def _tiny_en_source_dir():
    known = KNOWN_BACKBONES["tiny.en"]
    module, folder = known.config_dir
    return package_dir(module, known.pip_requirement) / folder


def to_ctranslate2(model: WhisperForConditionalGeneration) -> dict[str, np.ndarray]:
    """The inverse of the converter's mapping, written independently from the CTranslate2 spec."""
    sd = {k: v.detach().numpy().astype(np.float16) for k, v in model.state_dict().items()}
    v: dict[str, np.ndarray] = {}

    def put_linear(dst, src):
        v[f"{dst}/weight"] = sd[f"{src}.weight"]
        if f"{src}.bias" in sd:
            v[f"{dst}/bias"] = sd[f"{src}.bias"]

    def put_norm(dst, src):
        v[f"{dst}/gamma"], v[f"{dst}/beta"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    cfg = model.config
    for side, n in (("encoder", cfg.encoder_layers), ("decoder", cfg.decoder_layers)):
        for i in range(n):
            s, d = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            q, k, val = (f"{s}.self_attn.{p}_proj" for p in "qkv")
            v[f"{d}/self_attention/linear_0/weight"] = np.concatenate([sd[f"{x}.weight"] for x in (q, k, val)])
            zeros = np.zeros_like(sd[f"{q}.bias"])
            v[f"{d}/self_attention/linear_0/bias"] = np.concatenate([sd[f"{q}.bias"], zeros, sd[f"{val}.bias"]])
            put_linear(f"{d}/self_attention/linear_1", f"{s}.self_attn.out_proj")
            put_norm(f"{d}/self_attention/layer_norm", f"{s}.self_attn_layer_norm")
            if side == "decoder":
                put_linear(f"{d}/attention/linear_0", f"{s}.encoder_attn.q_proj")
                ek, ev = f"{s}.encoder_attn.k_proj", f"{s}.encoder_attn.v_proj"
                v[f"{d}/attention/linear_1/weight"] = np.concatenate([sd[f"{ek}.weight"], sd[f"{ev}.weight"]])
                v[f"{d}/attention/linear_1/bias"] = np.concatenate([np.zeros_like(sd[f"{ev}.bias"]), sd[f"{ev}.bias"]])
                put_linear(f"{d}/attention/linear_2", f"{s}.encoder_attn.out_proj")
                put_norm(f"{d}/attention/layer_norm", f"{s}.encoder_attn_layer_norm")
            put_linear(f"{d}/ffn/linear_0", f"{s}.fc1")
            put_linear(f"{d}/ffn/linear_1", f"{s}.fc2")
            put_norm(f"{d}/ffn/layer_norm", f"{s}.final_layer_norm")
        put_norm(f"{side}/layer_norm", f"model.{side}.layer_norm")
        v[f"{side}/num_heads"] = np.array(getattr(cfg, f"{side}_attention_heads"), dtype=np.int16)
    for conv in ("conv1", "conv2"):
        put_linear(f"encoder/{conv}", f"model.encoder.{conv}")
    v["encoder/position_encodings/encodings"] = sd["model.encoder.embed_positions.weight"]
    v["decoder/embeddings/weight"] = sd["model.decoder.embed_tokens.weight"]
    v["decoder/position_encodings/encodings"] = sd["model.decoder.embed_positions.weight"]
    return v


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(WhisperConfig(**TINY)).eval()
    # round-trip through float16 so the comparison is exact
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    return model


@pytest.fixture
def ct2_dir(tmp_path, small_model):
    src = tmp_path / "ct2"
    src.mkdir()
    write_model_bin(src / "model.bin", "WhisperSpec", to_ctranslate2(small_model))
    shutil.copyfile(_tiny_en_source_dir() / "tokenizer.json", src / "tokenizer.json")
    (src / "config.json").write_text(json.dumps({"suppress_ids": [1, 2], "suppress_ids_begin": [220, 50256],
                                                 "alignment_heads": [[1, 0]], "lang_ids": []}))
    return src


def test_read_write_round_trip(tmp_path):
    variables = {"a/weight": np.arange(6, dtype=np.float16).reshape(2, 3), "a/n": np.array(3, np.int16)}
    write_model_bin(tmp_path / "model.bin", "WhisperSpec", variables)
    spec, back = read_model_bin([tmp_path / "model.bin"])
    assert spec == "WhisperSpec"
    assert set(back) == set(variables)
    for k, value in variables.items():
        np.testing.assert_array_equal(back[k], value)


def test_split_model_bin_reads_like_one(tmp_path):
    variables = {"x": np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)}
    write_model_bin(tmp_path / "model.bin", "WhisperSpec", variables)
    raw = (tmp_path / "model.bin").read_bytes()
    (tmp_path / "model.bin.part1").write_bytes(raw[:1000])
    (tmp_path / "model.bin.part2").write_bytes(raw[1000:])
    _, back = read_model_bin([tmp_path / "model.bin.part1", tmp_path / "model.bin.part2"])
    np.testing.assert_array_equal(back["x"], variables["x"])


def test_truncated_model_bin_is_rejected(tmp_path):
    write_model_bin(tmp_path / "model.bin", "WhisperSpec", {"x": np.ones((100, 100), np.float32)})
    raw = (tmp_path / "model.bin").read_bytes()
    (tmp_path / "model.bin").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(BackboneUnavailable, match="truncated"):
        read_model_bin([tmp_path / "model.bin"])


def test_converted_small_model_matches_original(ct2_dir, tmp_path, small_model):
    out = convert_whisper_dir(ct2_dir, tmp_path / "hf")
    converted = WhisperForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    assert converted.config.d_model == TINY["d_model"]
    assert converted.config.encoder_layers == TINY["encoder_layers"]
    original_sd, converted_sd = small_model.state_dict(), converted.state_dict()
    assert set(original_sd) == set(converted_sd)
    for name, tensor in original_sd.items():
        torch.testing.assert_close(converted_sd[name], tensor, rtol=0, atol=0, msg=name)
    features = torch.randn(1, 80, 3000)
    decoder_ids = torch.tensor([[50257, 50362, 400, 500]])
    with torch.no_grad():
        ref = small_model(input_features=features, decoder_input_ids=decoder_ids).logits
        got = converted(input_features=features, decoder_input_ids=decoder_ids).logits
    torch.testing.assert_close(got, ref)


def test_nonzero_key_bias_is_refused(ct2_dir, tmp_path, small_model):
    variables = to_ctranslate2(small_model)
    bias = variables["encoder/layer_0/self_attention/linear_0/bias"]
    bias[TINY["d_model"]] = 1.0  # first element of the key slice
    write_model_bin(ct2_dir / "model.bin", "WhisperSpec", variables)
    with pytest.raises(BackboneUnavailable, match="key bias"):
        convert_whisper_dir(ct2_dir, tmp_path / "hf")


def test_ct2_directory_resolves_and_caches(ct2_dir, tmp_path):
    first = resolve_backbone(str(ct2_dir), tmp_path / "cache")
    second = resolve_backbone(str(ct2_dir), tmp_path / "cache")
    assert first.location == second.location
    assert (tmp_path / "cache").joinpath(first.location).is_dir()


def test_unknown_and_missing_sources_have_clear_errors(tmp_path):
    with pytest.raises(BackboneUnavailable, match="unknown backbone"):
        resolve_backbone("no-such-model", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneUnavailable, match="neither a transformers directory"):
        resolve_backbone(str(tmp_path / "empty"), tmp_path)
