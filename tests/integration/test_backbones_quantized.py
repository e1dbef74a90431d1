"""The real tiny.en backbone quantized to int8 and NF4: same fingerprint as fp32, transcripts close to
fp32 on real speech, and an adapter file accepted by all three."""

from __future__ import annotations

import pytest
import torch

from splitasr.adapters import BackboneSpec, load_adapter
from splitasr.audio import decode_audio
from splitasr.backbones.loader import load_backbone
from splitasr.backbones.quantize import weight_bytes
from splitasr.decoding import DecodingOptions, transcribe
from splitasr.scoring import wer
from tests.adapter_factory import adapter_bytes


# NF4 quantization of tiny.en takes about 10 s on one busy CPU core (bitsandbytes' CPU path): slow suite.
@pytest.fixture(scope="module", params=["int8", pytest.param("nf4", marks=pytest.mark.slow)])
def quantized(request, backbone_cache_dir):
    if request.param == "nf4":
        pytest.importorskip("bitsandbytes")
    return load_backbone("tiny.en", cache_dir=backbone_cache_dir, device="cpu", quantize=request.param)


def test_quantized_tiny_en_keeps_the_fingerprint(quantized, tiny_backbone):
    spec = BackboneSpec.from_model(quantized.name, quantized.model)
    fp32_spec = BackboneSpec.from_model(tiny_backbone.name, tiny_backbone.model)
    assert spec.fingerprint == fp32_spec.fingerprint
    # int8 holds an untied int8 copy of the output head (20 MB for tiny.en) next to the fp32 embedding
    bound = 0.85 if quantized.quantization == "int8" else 0.8
    assert weight_bytes(quantized.model) < bound * weight_bytes(tiny_backbone.model)
    # an adapter made for the fp32 backbone validates against the quantized one
    assert load_adapter(adapter_bytes(fp32_spec, "saml", seed=3), expected_backbone=spec).kind == "saml"


@pytest.mark.slow
def test_quantized_tiny_en_transcribes_real_speech(quantized, real_speech):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        rows = real_speech[:3]
        audios = [decode_audio(r["path"]) for r in rows]
        hyps = [r.text for r in transcribe(quantized, audios, DecodingOptions(max_new_tokens=60))]
        assert wer([r["text"] for r in rows], hyps) < 0.35, hyps
    finally:
        torch.set_num_threads(threads)
