"""The real tiny.en backbone quantized to int8 and NF4: same fingerprint as fp32, transcripts close to
fp32 on real speech, and an adapter file accepted by all three."""

from __future__ import annotations

import pytest
import torch
from splitasr.adapters import BackboneSpec, load_adapter
from splitasr.audio import decode_audio
from splitasr.backbones.loader import load_backbone
from splitasr.backbones.quantize import weight_bytes
from splitasr.engine.decoding import DecodingOptions, transcribe
from splitasr.metrics import wer

from tests.adapter_factory import adapter_bytes


@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_quantized_tiny_en_transcribes_real_speech(mode, tiny_backbone, backbone_cache_dir, real_speech):
    if mode == "nf4":
        pytest.importorskip("bitsandbytes")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        quantized = load_backbone("tiny.en", cache_dir=backbone_cache_dir, device="cpu", quantize=mode)
        spec = BackboneSpec.from_model(quantized.name, quantized.model)
        fp32_spec = BackboneSpec.from_model(tiny_backbone.name, tiny_backbone.model)
        assert spec.fingerprint == fp32_spec.fingerprint
        assert weight_bytes(quantized.model) < 0.8 * weight_bytes(tiny_backbone.model)
        # an adapter made for the fp32 backbone validates against the quantized one
        assert load_adapter(adapter_bytes(fp32_spec, "saml", seed=3), expected_backbone=spec).kind == "saml"
        rows = real_speech[:3]
        audios = [decode_audio(r["path"]) for r in rows]
        options = DecodingOptions(max_new_tokens=60)
        hyps = [r.text.lower() for r in transcribe(quantized, audios, options)]
        refs = [r["text"].lower() for r in rows]
        assert wer(refs, hyps) < 0.35, hyps
    finally:
        torch.set_num_threads(threads)
