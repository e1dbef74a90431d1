"""Rows with different adapters (none, LoRA, GLoRA, SAML), options and arrival times share the engine's
running batch and get exactly what each would get alone."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import torch

from splitasr.adapters import bank_context, utterance_embedding
from splitasr.audio import decode_audio
from splitasr.backbones.whisper import WhisperBackbone
from splitasr.config import Settings
from splitasr.decoding import DecodingOptions
from splitasr.engine.engine import Engine
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


@pytest.fixture(scope="module")
def long_clip(real_speech):
    """~20 s of real speech: many decoder steps, so later requests join a running batch."""
    parts = [decode_audio(real_speech[i]["path"]) for i in (0, 3, 2)]
    return np.concatenate(parts)


def run(engine, jobs, delay_after_first: float = 0.0):
    """Submit ``jobs`` [(audio, sha, options)] concurrently; the first one ``delay`` s ahead."""

    def submit(audio, sha, options):
        return asyncio.create_task(engine.transcribe_audio(audio, options, sha))

    async def main():
        first = submit(*jobs[0])
        if delay_after_first:
            steps = engine.worker.stats.steps
            deadline = time.monotonic() + 60
            while engine.worker.stats.steps < steps + 3 and time.monotonic() < deadline:
                await asyncio.sleep(delay_after_first)
        rest = [submit(*job) for job in jobs[1:]]
        return await asyncio.gather(first, *rest, return_exceptions=True)

    return asyncio.run(main())


def tokens(result):
    return [s.tokens for s in result.segments]


def alone(engine, job):
    return run(engine, [job])[0]


def test_mixed_batch_equals_each_row_alone(engine, adapters, cards):
    plan = [None, adapters["lora"], adapters["glora"], adapters["saml"]]
    jobs = [(a, s, GREEDY) for a, s in zip(cards, plan)]
    before = engine.worker.stats.max_rows
    engine.worker.stats.max_rows = engine.worker.stats.max_adapters = 0
    shapes = []
    engine.worker.step_listeners.append(shapes.append)
    try:
        batched = run(engine, jobs)
    finally:
        engine.worker.step_listeners.remove(shapes.append)
    assert engine.worker.stats.max_rows >= 2, "concurrent requests should share decoder steps"
    # one forward pass held rows of several adapters (the base model's among them)
    assert engine.worker.stats.max_adapters >= 2 and max(s.adapters for s in shapes) == engine.worker.stats.max_adapters
    assert all(s.requests <= s.rows and s.adapters <= s.requests for s in shapes)
    engine.worker.stats.max_rows = max(before, engine.worker.stats.max_rows)
    for b, job in zip(batched, jobs):
        assert tokens(b) == tokens(alone(engine, job))
    # the adapters really change the output: not every adapted row equals the plain backbone
    plain = run(engine, [(a, None, GREEDY) for a in cards[:4]])
    assert any(p.text != q.text for p, q in zip(plain[1:], batched[1:]))


def test_rows_admitted_mid_flight_equal_each_row_alone(engine, adapters, cards, long_clip):
    """A long file decodes; requests with other adapters join its running batch at a step boundary."""
    jobs = [(long_clip, adapters["saml"], DecodingOptions()), (cards[0], adapters["lora"], GREEDY),
            (cards[1], None, BEAM), (cards[2], adapters["glora"], GREEDY)]
    joined = engine.worker.stats.admitted_mid_flight
    together = run(engine, jobs, delay_after_first=0.05)
    assert engine.worker.stats.admitted_mid_flight >= joined + 3
    for got, job in zip(together, jobs):
        assert tokens(got) == tokens(alone(engine, job))


def test_a_short_request_finishes_before_a_long_one(engine, cards, long_clip):
    """No head-of-line blocking: the short clip does not wait for the long file's batch."""
    finished: list[str] = []

    async def main():
        async def timed(name, audio):
            await engine.transcribe_audio(audio, DecodingOptions())
            finished.append(name)

        long = asyncio.create_task(timed("long", np.concatenate([long_clip, long_clip])))
        steps = engine.worker.stats.steps
        while engine.worker.stats.steps < steps + 2:
            await asyncio.sleep(0.02)
        await asyncio.gather(long, timed("short", cards[0]))

    asyncio.run(main())
    assert finished == ["short", "long"]


def test_mixed_batch_with_beams_equals_each_row_alone(engine, adapters, cards):
    jobs = [(cards[0], adapters["lora"], BEAM), (cards[1], None, BEAM), (cards[2], adapters["saml"], BEAM)]
    for b, job in zip(run(engine, jobs), jobs):
        assert tokens(b) == tokens(alone(engine, job))


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
        alone(engine, (audio, sha, GREEDY))
    assert engine.pool.stats.evictions >= before + 2
    assert engine.pool.occupancy == engine.pool.capacity
    assert engine.pool.resident(shas[-1]) and not engine.pool.resident(shas[0])


def test_more_distinct_adapters_than_slots_at_once(engine, cards):
    """More concurrent adapters than slots: the extra ones wait for a slot; each row is its own."""
    shas = [engine.put_adapter("carol", f"b{i}", adapter_bytes(engine.spec, "lora", seed=200 + i)).sha256
            for i in range(engine.pool.capacity + 1)]
    jobs = [(cards[i % len(cards)], s, GREEDY) for i, s in enumerate(shas)]
    results = run(engine, jobs)
    assert not any(isinstance(r, Exception) for r in results), results
    for i in (0, len(jobs) - 1):
        assert results[i].text == alone(engine, jobs[i]).text


def test_one_failing_row_does_not_fail_its_neighbours(engine, cards):
    """A stored adapter whose file was damaged on disk fails only its own request."""
    from splitasr.errors import InvalidAdapter

    bad = engine.put_adapter("dave", "broken", adapter_bytes(engine.spec, "lora", seed=300))
    good = engine.put_adapter("dave", "fine", adapter_bytes(engine.spec, "lora", seed=301))
    blob = engine.store.blob_path(bad.sha256)
    blob.write_bytes(blob.read_bytes()[:1000])  # truncated behind the store's back
    ok, failed, plain = run(engine, [(cards[0], good.sha256, GREEDY), (cards[1], bad.sha256, GREEDY),
                                     (cards[2], None, GREEDY)])
    assert isinstance(failed, InvalidAdapter)
    assert not isinstance(ok, Exception) and not isinstance(plain, Exception)
    assert plain.text == alone(engine, (cards[2], None, GREEDY)).text


def test_a_cancelled_request_leaves_the_batch(engine, long_clip, cards):
    """A client that goes away: its rows are retired at the next step boundary, others continue."""

    async def main():
        doomed = asyncio.create_task(engine.transcribe_audio(np.concatenate([long_clip] * 3), DecodingOptions()))
        steps = engine.worker.stats.steps
        while engine.worker.stats.steps < steps + 3:
            await asyncio.sleep(0.02)
        cancelled = engine.worker.stats.cancelled
        doomed.cancel()
        other = await engine.transcribe_audio(cards[0], GREEDY)
        while engine.worker.pending:
            await asyncio.sleep(0.02)
        return cancelled, other

    cancelled, other = asyncio.run(main())
    assert engine.worker.stats.cancelled == cancelled + 1
    assert engine.worker.pending == 0 and engine.worker.live_rows == 0
    assert other.text


def test_a_batch_narrower_than_the_sampling_width(backbone_cache_dir, tmp_path, cards):
    """Sampling (best_of 5) on a 2-row batch is cut to the batch; a beam wider than it is refused."""
    from splitasr.errors import InvalidInput

    backbone = WhisperBackbone.load("tiny.en", cache_dir=backbone_cache_dir, device="cpu")
    narrow = Engine(Settings(cache_dir=tmp_path, max_batch_rows=2, _env_file=None), backbone=backbone)
    narrow.load()
    try:
        sampled = asyncio.run(asyncio.wait_for(narrow.transcribe_audio(cards[0], DecodingOptions(temperature=0.4)),
                                               120))
        assert sampled.text.strip() and narrow.worker.stats.max_rows <= 2
        with pytest.raises(InvalidInput, match="SPLITASR_MAX_BATCH_ROWS"):
            asyncio.run(asyncio.wait_for(narrow.transcribe_audio(cards[0], DecodingOptions(beam_size=3)), 120))
    finally:
        narrow.close(10)


def test_one_tenant_cannot_take_every_place_in_the_queue(backbone_cache_dir, tmp_path, cards, long_clip):
    """With 4 places, a tenant holds at most 2 (half); another tenant is still served meanwhile."""
    from splitasr.errors import Overloaded

    backbone = WhisperBackbone.load("tiny.en", cache_dir=backbone_cache_dir, device="cpu")
    keys = "greedy-key-0123456789:greedy,other-key-0123456789:other"  # tenants with keys share the queue
    small = Engine(Settings(cache_dir=tmp_path, max_queued_requests=4, api_keys=keys, _env_file=None),
                   backbone=backbone)
    small.load()

    async def main():
        greedy = [asyncio.create_task(small.transcribe_audio(long_clip, DecodingOptions(), tenant="greedy"))
                  for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="SPLITASR_MAX_QUEUED_REQUESTS_PER_TENANT"):
            await small.transcribe_audio(cards[0], DecodingOptions(), tenant="greedy")
        other = await small.transcribe_audio(cards[0], DecodingOptions(), tenant="other")
        return other, await asyncio.gather(*greedy)

    try:
        other, greedy = asyncio.run(asyncio.wait_for(main(), 300))
        assert other.text.strip() and all(r.text.strip() for r in greedy)
    finally:
        small.close(10)


def test_one_tenant_cannot_take_every_row_of_the_batch(backbone_cache_dir, tmp_path, cards, long_clip):
    """With 4 rows and keys, one tenant's requests hold at most 3 (three quarters): its fourth request
    waits although a row is free, and another tenant's request takes that row at once and finishes first."""
    backbone = WhisperBackbone.load("tiny.en", cache_dir=backbone_cache_dir, device="cpu")
    keys = "greedy-key-0123456789:greedy,other-key-0123456789:other"
    small = Engine(Settings(cache_dir=tmp_path, max_batch_rows=4, api_keys=keys, _env_file=None), backbone=backbone)
    small.load()
    finished: list[str] = []

    async def main():
        async def one(tenant, audio):
            result = await small.transcribe_audio(audio, DecodingOptions(), tenant=tenant)
            finished.append(tenant)
            return result

        greedy = [asyncio.create_task(one("greedy", long_clip)) for _ in range(4)]
        deadline = time.monotonic() + 60
        while small.worker.live_rows < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # some steps with the fourth request waiting
        assert small.worker.live_rows == 3 and small.worker.queued == 1
        other = await one("other", cards[0])
        return other, await asyncio.gather(*greedy)

    try:
        other, greedy = asyncio.run(asyncio.wait_for(main(), 300))
        assert other.text.strip() and all(r.text == greedy[0].text for r in greedy)
        assert finished.index("other") < 3, finished  # before the greedy tenant's last requests
        assert small.worker.stats.max_rows <= 4
    finally:
        small.close(10)
