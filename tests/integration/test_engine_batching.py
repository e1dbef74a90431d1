"""Rows with different adapters (none, LoRA, GLoRA, SAML) share one forward pass and get exactly
what each would get alone."""

from __future__ import annotations

import pytest
import torch

from splitasr.adapters import bank_context, utterance_embedding
from splitasr.audio import decode_audio
from splitasr.backbones.whisper import WhisperBackbone
from splitasr.config import Settings
from splitasr.engine.decoding import DecodingOptions
from splitasr.engine.engine import Engine, Row
from tests.adapter_factory import adapter_bytes


@pytest.fixture(scope="module")
def engine(backbone_cache_dir, tmp_path_factory):
    # its own backbone: the slot pool owns the bank of the model it serves
    backbone = WhisperBackbone.load("tiny.en", cache_dir=backbone_cache_dir, device="cpu")
    settings = Settings(cache_dir=tmp_path_factory.mktemp("engine"), adapter_slots=4, _env_file=None)
    engine = Engine(settings, backbone=backbone)
    engine.load()
    yield engine
    engine.close(10)


@pytest.fixture(scope="module")
def adapters(engine):
    """name -> sha256 of three real uploaded adapters (one per kind) for tenant 'alice'."""
    shas = {}
    for i, kind in enumerate(("lora", "glora", "saml")):
        record = engine.put_adapter("alice", f"{kind}-1", adapter_bytes(engine.spec, kind, seed=10 + i))
        shas[kind] = record.sha256
    return shas


# short utterances and a token cap keep these tests quick on two CPU cores
GREEDY = DecodingOptions(max_new_tokens=40)
BEAM = DecodingOptions(beam_size=2, max_new_tokens=40)


@pytest.fixture(scope="module")
def cards(real_speech):
    return [decode_audio(r["path"]) for r in real_speech[5:10]]


def test_mixed_batch_equals_each_row_alone(engine, adapters, cards):
    plan = [None, adapters["lora"], adapters["glora"], adapters["saml"]]
    rows = [Row(a, s) for a, s in zip(cards, plan)]
    batched = engine._run_batch(rows, GREEDY)
    alone = [engine._run_batch([row], GREEDY)[0] for row in rows]
    for b, a in zip(batched, alone):
        assert [s.tokens for s in b.segments] == [s.tokens for s in a.segments]
    # the adapters really change the output: not every adapted row equals the plain backbone
    plain = engine._run_batch([Row(a, None) for a in cards[:4]], GREEDY)
    assert any(p.text != q.text for p, q in zip(plain[1:], batched[1:]))


def test_mixed_batch_equals_each_row_alone_with_beams(engine, adapters, cards):
    rows = [Row(cards[0], adapters["lora"]), Row(cards[1], None), Row(cards[2], adapters["saml"])]
    batched = engine._run_batch(rows, BEAM)
    alone = [engine._run_batch([row], BEAM)[0] for row in rows]
    for b, a in zip(batched, alone):
        assert [s.tokens for s in b.segments] == [s.tokens for s in a.segments]


def test_mixed_batch_logits_match_single_rows(engine, adapters, cards):
    backbone = engine.backbone
    audios = cards[:4]
    slots = engine.pool.acquire([None, adapters["lora"], adapters["glora"], adapters["saml"]])
    features, mask = backbone.features(audios)
    prompt = torch.tensor([[50257, 50362, 400, 318, 257]] * 4)
    emb = utterance_embedding(features, mask.sum(-1))
    with torch.inference_mode():
        with bank_context(backbone.model, slots=slots, utterance_embedding=emb):
            batched = backbone.model(input_features=features, decoder_input_ids=prompt).logits
        for i, slot in enumerate(slots):
            with bank_context(backbone.model, slots=[slot], utterance_embedding=emb[i : i + 1]):
                single = backbone.model(input_features=features[i : i + 1], decoder_input_ids=prompt[i : i + 1]).logits
            torch.testing.assert_close(batched[i : i + 1], single, rtol=1e-4, atol=1e-4)


def test_pool_evicts_least_recently_used(engine, cards):
    audio = cards[0]
    shas = [engine.put_adapter("bob", f"a{i}", adapter_bytes(engine.spec, "lora", seed=100 + i)).sha256
            for i in range(engine.pool.capacity + 2)]
    before = engine.pool.stats.evictions
    for sha in shas:
        engine._run_batch([Row(audio, sha)], GREEDY)
    assert engine.pool.stats.evictions >= before + 2
    assert engine.pool.occupancy == engine.pool.capacity
    assert engine.pool.resident(shas[-1]) and not engine.pool.resident(shas[0])


def test_more_distinct_adapters_than_slots_in_one_batch(engine, cards):
    shas = [engine.put_adapter("carol", f"b{i}", adapter_bytes(engine.spec, "lora", seed=200 + i)).sha256
            for i in range(engine.pool.capacity + 1)]
    rows = [Row(cards[i % len(cards)], s) for i, s in enumerate(shas)]
    results = engine._run_batch(rows, GREEDY)
    assert len(results) == len(rows)
    for i in (0, len(rows) - 1):  # the batch was split across slot loads, yet each row is its own
        assert results[i].text == engine._run_batch([rows[i]], GREEDY)[0].text


def test_one_failing_row_does_not_fail_its_neighbours(engine, cards):
    """A stored adapter whose file was damaged on disk fails only its own request."""
    import asyncio

    from splitasr.errors import InvalidAdapter

    bad = engine.put_adapter("dave", "broken", adapter_bytes(engine.spec, "lora", seed=300))
    good = engine.put_adapter("dave", "fine", adapter_bytes(engine.spec, "lora", seed=301))
    blob = engine.store.blob_path(bad.sha256)
    blob.write_bytes(blob.read_bytes()[:1000])  # truncated behind the store's back

    async def run_together():
        return await asyncio.gather(
            engine.transcribe_audio(cards[0], GREEDY, good.sha256),
            engine.transcribe_audio(cards[1], GREEDY, bad.sha256),
            engine.transcribe_audio(cards[2], GREEDY, None),
            return_exceptions=True,
        )

    ok, failed, plain = asyncio.run(run_together())
    assert isinstance(failed, InvalidAdapter)
    assert not isinstance(ok, Exception) and not isinstance(plain, Exception)
    assert plain.text == engine._run_batch([Row(cards[2], None)], GREEDY)[0].text
