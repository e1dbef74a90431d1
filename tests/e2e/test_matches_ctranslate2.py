"""The converted tiny.en computes what the CTranslate2 runtime computes on the original weights.

Both get the same log-mel features, so any difference comes from the weight conversion alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from splitasr.audio import decode_audio
from splitasr.backbones.sources import KNOWN_BACKBONES, package_dir
from splitasr.decoding import DecodingOptions, nbest

ctranslate2 = pytest.importorskip("ctranslate2")


@pytest.fixture(scope="module")
def reference():
    known = KNOWN_BACKBONES["tiny.en"]
    module, folder = known.config_dir
    path = package_dir(module, known.pip_requirement) / folder
    return ctranslate2.models.Whisper(str(path), device="cpu", compute_type="float32", intra_threads=2)


def test_encoder_and_greedy_tokens_match_ctranslate2(tiny_backbone, real_speech, reference):
    tok = tiny_backbone.tokenizer
    prompt = [tok.convert_tokens_to_ids("<|startoftranscript|>"), tok.convert_tokens_to_ids("<|notimestamps|>")]
    for row in real_speech:
        audio = decode_audio(row["path"])
        features, _ = tiny_backbone.features([audio])
        view = ctranslate2.StorageView.from_array(np.ascontiguousarray(features.numpy()))
        with torch.inference_mode():
            ours = tiny_backbone.model.model.encoder(features).last_hidden_state.numpy()
        theirs = np.array(reference.encode(view))
        np.testing.assert_allclose(ours, theirs, atol=2e-3)
        expected = reference.generate(view, [prompt], beam_size=1, suppress_blank=True, suppress_tokens=[-1],
                                      max_length=224)[0].sequences_ids[0]
        got = nbest(tiny_backbone, [audio], DecodingOptions(nbest=1, beam_size=1))[0][0].tokens
        assert got == expected, (row["text"], tok.decode(got), tok.decode(expected))
