"""`SPLITASR_DTYPE=bfloat16`: the engine serves real speech on bfloat16 weights, adapters included, with
the same text as float32 on the real-speech clips checked here."""

from __future__ import annotations

import asyncio

import pytest
import torch

from splitasr.audio import decode_audio
from splitasr.backbones.loader import load_backbone
from splitasr.config import Settings
from splitasr.decoding import DecodingOptions
from splitasr.engine.engine import Engine
from splitasr.errors import InvalidInput
from tests.adapter_factory import adapter_bytes


@pytest.fixture(scope="module")
def engine(cache_root, tmp_path_factory):
    settings = Settings(cache_dir=cache_root, store_dir=tmp_path_factory.mktemp("store"), dtype="bfloat16",
                        adapter_slots=2, _env_file=None)
    engine = Engine(settings)
    engine.load()
    yield engine
    engine.close(10)


def test_bfloat16_weights_serve_the_same_text(engine, tiny_backbone, real_speech):
    assert engine.backbone.dtype == torch.bfloat16
    assert tiny_backbone.dtype == torch.float32
    from splitasr.decoding import transcribe

    for record in real_speech[5:8]:
        audio = decode_audio(record["path"])
        ours = asyncio.run(engine.transcribe_audio(audio, DecodingOptions()))
        assert ours.text == transcribe(tiny_backbone, [audio])[0].text


def test_adapters_load_and_run_on_bfloat16_weights(engine, real_speech):
    record = engine.put_adapter("default", "mine", adapter_bytes(engine.spec, "glora", seed=3))
    audio = decode_audio(real_speech[-1]["path"])
    result = asyncio.run(engine.transcribe_audio(audio, DecodingOptions(word_timestamps=True), record.sha256))
    assert "forward" in result.text.lower()
    words = [w for s in result.segments for w in s.words]
    assert words and all(0 <= w.start <= w.end <= result.duration for w in words)


def test_quantization_and_a_dtype_are_alternatives(backbone_cache_dir):
    with pytest.raises(InvalidInput, match="alternatives"):
        load_backbone("tiny.en", cache_dir=backbone_cache_dir, quantize="int8", dtype=torch.bfloat16)
