"""``splitasr bench quant`` rows, measured in-process on a tiny random CTC backbone and one real clip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from splitasr.adapters import BackboneSpec, adapter_to_bytes, get_kind, new_adapter, resolve_targets
from splitasr.backbones.loader import load_backbone
from splitasr.bench import quant

REAL = Path(__file__).resolve().parents[2] / "data" / "real-speech"


@pytest.fixture
def manifest(tmp_path) -> Path:
    lines = (REAL / "manifest.jsonl").read_text().splitlines()[1:2]  # one short clip: 3 s
    rows = [json.loads(line) for line in lines]
    for row in rows:
        row["audio_filepath"] = str(REAL / row["audio_filepath"])
    path = tmp_path / "one.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_measure_rows_and_summary(ctc_dir, manifest, tmp_path):
    backbone = load_backbone(str(ctc_dir), cache_dir=tmp_path, device="cpu")
    spec = BackboneSpec.from_model(backbone.name, backbone.model)
    adapter = new_adapter("lora", get_kind("lora").make_config(r=2, alpha=4.0),
                          resolve_targets("attn", spec.linear_shapes), spec)
    adapter_path = tmp_path / "a.safetensors"
    adapter_path.write_bytes(adapter_to_bytes(adapter))
    rows = [quant.measure(str(ctc_dir), mode, {"one": manifest}, adapter_path if mode == "int8" else None,
                          cache_dir=tmp_path, threads=1, batch_size=2) for mode in ("none", "int8")]
    fp32, int8 = rows
    assert int8["weight_mib"] < fp32["weight_mib"]
    for row in rows:
        assert row["one"]["utterances"] == 1 and row["one"]["wer"] >= 0 and row["one"]["rtf"] > 0
    # a fresh LoRA (B = 0) changes nothing: same WER as without it
    assert int8["one+adapter"]["wer"] == int8["one"]["wer"]
    summary = quant.summarize(rows)[str(ctc_dir)]
    assert summary["one/none"] == fp32["one"]["wer"] and summary["one+adapter/int8"] == int8["one"]["wer"]
