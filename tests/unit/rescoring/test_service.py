"""The server's rescoring pool: rows with different rescorers in one pass, LRU eviction, validation."""

from __future__ import annotations

import hashlib

import pytest
import torch

from splitasr.adapters import KindConfig, new_adapter
from splitasr.decoding import Hypothesis, Segment, Transcription
from splitasr.errors import InvalidAdapter
from splitasr.rescoring.fileformat import rescorer_to_bytes
from splitasr.rescoring.model import Fusion, Rescorer, encoder_targets
from splitasr.rescoring.service import RescoringService

TEXTS = ["the heparin drip is running", "the hepburn drip is running", "a heparin trip is running"]


def result() -> Transcription:
    hyps = [Hypothesis(t, [1, 2, 3, 4, 5], -1.0 - i * 0.1) for i, t in enumerate(TEXTS)]
    return Transcription(TEXTS[0], "en", 2.0, [Segment(0, 0.0, 2.0, TEXTS[0], [1])], hyps)


@pytest.fixture(scope="module")
def files():
    service = RescoringService(lambda sha: b"", slots=1)
    encoder = service.encoder
    out = {}
    for favourite in (1, 2):  # a head that scores TEXTS[favourite] highest: the pooled-vector direction
        lora = new_adapter("lora", KindConfig(r=2, alpha=4.0), encoder_targets(encoder, "qv"), encoder.spec)
        batch = encoder.tokenize(TEXTS)
        with torch.no_grad():
            hidden = encoder.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        head = pooled[favourite] - pooled.mean(0)
        data = rescorer_to_bytes(Rescorer(lora, head * 100, torch.zeros(1), fusion=Fusion(100.0, 0.0)))
        out[hashlib.sha256(data).hexdigest()] = (data, favourite)
    return out


def test_rows_use_their_own_rescorer_and_the_pool_evicts(files):
    store = {sha: data for sha, (data, _) in files.items()}
    service = RescoringService(store.__getitem__, slots=1)  # one slot: two rescorers must take turns
    shas = list(files)
    results = [result(), result(), result()]
    service.apply([shas[0], shas[1], None], results)
    assert results[0].text == TEXTS[files[shas[0]][1]]
    assert results[1].text == TEXTS[files[shas[1]][1]]
    assert results[2].text == TEXTS[0] and len(results[2].segments) == 1  # no rescorer: untouched
    assert results[0].nbest[0].text == results[0].text and len(results[0].nbest) == 3
    assert results[0].segments[0].end == 2.0 and results[0].segments[0].text == results[0].text
    again = [result()]
    service.apply([shas[0]], again)  # evicted above, loaded again
    assert again[0].text == TEXTS[files[shas[0]][1]]


def test_validate_refuses_an_asr_adapter_file(files):
    service = RescoringService(lambda sha: b"", slots=1)
    with pytest.raises(InvalidAdapter, match="not a SplitASR rescorer"):
        service.validate(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    data, _ = next(iter(files.values()))
    assert service.validate(data).fusion == Fusion(100.0, 0.0)
