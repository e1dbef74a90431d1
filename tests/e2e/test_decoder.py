"""SplitASR's own decode loop against references, on real tiny.en weights and real speech.

- greedy decoding (with and without timestamps, with and without an adapter) gives exactly the tokens of
  transformers' ``generate``, the public method, on every real-speech fixture;
- beam search and the N-best list equal a plain reference beam search (openai/whisper's algorithm, a
  full forward per step, transformers' public Whisper logits processors);
- long-form audio gets sane segment boundaries;
- the fixed-shape step that CUDA graphs record, run eagerly here, chooses the same tokens.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers.generation import (
    SuppressTokensAtBeginLogitsProcessor,
    SuppressTokensLogitsProcessor,
    WhisperTimeStampLogitsProcessor,
)

from splitasr.adapters import (
    AdapterLimits,
    BackboneSpec,
    attach_bank,
    bank_context,
    detach_bank,
    load_adapter,
    load_into_slot,
    utterance_embedding,
)
from splitasr.audio import SAMPLE_RATE_HZ, decode_audio
from splitasr.decoding import DecodingOptions, transcribe
from splitasr.decoding.whisper.decoder import WhisperDecoder
from splitasr.decoding.whisper.graphs import StaticStep, buckets
from tests.adapter_factory import adapter_bytes

PLAIN = {"compression_ratio_threshold": None, "logprob_threshold": None, "no_speech_threshold": None}


@pytest.fixture(scope="module")
def audios(real_speech):
    return [decode_audio(r["path"]) for r in real_speech]


def reference_generate(backbone, audio, timestamps: bool, slot: int = 0) -> list[int]:
    """transformers' Whisper ``generate`` on one utterance: its generated tokens (segments joined)."""
    features, mask = backbone.features([audio])
    kwargs = {"attention_mask": mask, "return_timestamps": timestamps}
    if timestamps:
        kwargs["return_segments"] = True
    with torch.inference_mode():
        if slot:
            emb = utterance_embedding(features, mask.sum(-1))
            with bank_context(backbone.model, slots=[slot], utterance_embedding=emb):
                out = backbone.model.generate(features, **kwargs)
        else:
            out = backbone.model.generate(features, **kwargs)
    if timestamps:
        return [int(t) for seg in out["segments"][0] for t in seg["tokens"]]
    eot = backbone.model.generation_config.eos_token_id
    sequence = out[0].tolist() if isinstance(out, torch.Tensor) else out["sequences"][0].tolist()
    no_ts = backbone.model.generation_config.no_timestamps_token_id
    tokens = sequence[sequence.index(no_ts) + 1:] if no_ts in sequence else sequence
    return tokens[: tokens.index(eot)] if eot in tokens else tokens


def ours(backbone, audio, timestamps: bool, slot: int = 0) -> list[int]:
    options = DecodingOptions(without_timestamps=not timestamps, **PLAIN)
    [result] = transcribe(backbone, [audio], options, [slot] if slot else None)
    return [t for s in result.segments for t in s.tokens]


@pytest.mark.parametrize("timestamps", [True, False], ids=["timestamps", "no-timestamps"])
def test_greedy_matches_generate_token_for_token(tiny_backbone, audios, timestamps):
    for i, audio in enumerate(audios):
        assert ours(tiny_backbone, audio, timestamps) == reference_generate(tiny_backbone, audio, timestamps), i


@pytest.fixture(scope="module")
def adapted(backbone_cache_dir):
    """A fresh tiny.en with a one-slot bank holding a random SAML adapter (the mixture path)."""
    from splitasr.backbones.whisper import WhisperBackbone

    backbone = WhisperBackbone.load("tiny.en", cache_dir=backbone_cache_dir, device="cpu")
    spec = BackboneSpec.from_model(backbone.name, backbone.model)
    adapter = load_adapter(adapter_bytes(spec, "saml", seed=7), expected_backbone=spec)
    attach_bank(backbone.model, adapter.targets, num_slots=1,
                limits=AdapterLimits(max_rank=adapter.config.r, max_experts=adapter.config.num_experts),
                kinds=[adapter.kind])
    load_into_slot(backbone.model, 1, adapter)
    yield backbone
    detach_bank(backbone.model)


@pytest.mark.parametrize("timestamps", [True, False], ids=["timestamps", "no-timestamps"])
def test_greedy_with_an_adapter_matches_generate(adapted, audios, timestamps):
    changed = 0
    for i, audio in enumerate(audios[:6]):
        mine = ours(adapted, audio, timestamps, slot=1)
        assert mine == reference_generate(adapted, audio, timestamps, slot=1), i
        changed += mine != ours(adapted, audio, timestamps)
    assert changed, "the adapter should change some transcripts"


# reference beam search ---------------------------------------------------------------------------------
def reference_beam(backbone, audio, beam: int, timestamps: bool) -> list[tuple[list[int], float]]:
    """openai/whisper's beam search written plainly: finished hypotheses ranked by logprob / length."""
    model, gen = backbone.model, backbone.model.generation_config
    eot, sot, no_ts = gen.eos_token_id, gen.decoder_start_token_id, gen.no_timestamps_token_id
    prompt = [sot] if timestamps else [sot, no_ts]
    processors = [SuppressTokensLogitsProcessor(gen.suppress_tokens),
                  SuppressTokensAtBeginLogitsProcessor(gen.begin_suppress_tokens, len(prompt))]
    if timestamps:
        processors.append(WhisperTimeStampLogitsProcessor(gen, begin_index=len(prompt)))
    features, _ = backbone.features([audio])
    live, finished = [(prompt, 0.0)], {}
    with torch.inference_mode():
        encoder_out = model.model.encoder(features).last_hidden_state
        for _ in range(224):
            ids = torch.tensor([tokens for tokens, _ in live])
            logits = model(encoder_outputs=(encoder_out.expand(len(live), -1, -1),),
                           decoder_input_ids=ids).logits[:, -1].float()
            for processor in processors:
                logits = processor(ids, logits)
            logprobs = torch.log_softmax(logits, -1)
            scores = {}
            for (tokens, total), row in zip(live, logprobs):
                values, indices = row.topk(beam + 1)
                for value, token in zip(values.tolist(), indices.tolist()):
                    if value > float("-inf"):
                        scores[(*tokens, token)] = total + value
            live, new = [], {}
            for sequence in sorted(scores, key=scores.get, reverse=True):
                if sequence[-1] == eot:
                    new[sequence] = scores[sequence]
                else:
                    live.append((list(sequence), scores[sequence]))
                    if len(live) == beam:
                        break
            for sequence in sorted(new, key=new.get, reverse=True):
                if len(finished) < beam:
                    finished[sequence] = new[sequence]
            if len(finished) >= beam:
                break
    hyps = [(list(seq[len(prompt):-1]), total) for seq, total in finished.items()]
    return sorted(hyps, key=lambda h: h[1] / len(h[0]), reverse=True)


def test_beam_search_matches_the_reference(tiny_backbone, audios):
    for i in (0, 6, 10):
        [result] = transcribe(tiny_backbone, [audios[i]], DecodingOptions(beam_size=4, **PLAIN))
        best, _ = reference_beam(tiny_backbone, audios[i], 4, timestamps=True)[0]
        assert [t for s in result.segments for t in s.tokens] == best, i


def test_nbest_is_the_reference_beam_search(tiny_backbone, audios):
    eot = tiny_backbone.model.generation_config.eos_token_id
    for i in (1, 9):
        [result] = transcribe(tiny_backbone, [audios[i]], DecodingOptions(nbest=3, **PLAIN))
        reference = reference_beam(tiny_backbone, audios[i], 6, timestamps=False)  # 2 × nbest beams
        texts, seen = [], set()
        for tokens, total in reference:
            text = tiny_backbone.tokenizer.decode([t for t in tokens if t < eot]).strip()
            if text not in seen:
                seen.add(text)
                texts.append((text, total))
        assert [h.text for h in result.nbest] == [t for t, _ in texts[:3]]
        assert [round(h.logprob, 3) for h in result.nbest] == pytest.approx([round(v, 3) for _, v in texts[:3]],
                                                                            abs=2e-3)
        assert result.text == result.nbest[0].text


def test_long_form_segments_are_sane(tiny_backbone, audios, real_speech):
    gap = np.zeros(SAMPLE_RATE_HZ // 2, np.float32)
    order = [0, 3, 2, 4, 1, 10, 9, 0, 3, 2, 4, 1, 10, 9]
    long = np.concatenate([x for i in order for x in (audios[i], gap)])
    duration = len(long) / SAMPLE_RATE_HZ
    assert duration > 60
    [result] = transcribe(tiny_backbone, [long])
    segments = result.segments
    assert len({s.seek for s in segments}) >= 3, "at least three windows"
    for previous, current in itertools.pairwise(segments):
        assert previous.start <= current.start and previous.end <= current.end + 0.01
        assert current.seek >= previous.seek
    for s in segments:
        assert 0 <= s.start <= s.end <= duration + 0.01
        assert s.end - s.start <= 30.0
        assert s.seek / 100 <= s.start + 0.01 and s.end <= s.seek / 100 + 30.0 + 0.01
    assert segments[-1].end > duration - 8
    text = result.text.lower()
    for i in (0, 10):
        tail = re.sub(r"[^\w ]", "", real_speech[i]["text"].lower()).split()[-2:]
        assert " ".join(tail) in re.sub(r"[^\w ]", "", text), (tail, text)


# the fixed-shape step (splitasr.decoding.whisper.graphs) ---------------------------------------------
def decoded_tokens(decoder, audios, options, slots) -> list[list[int]]:
    requests = [decoder.start(a, options, s) for a, s in zip(audios, slots)]
    decoder.run(requests)
    return [[t for s in r.result.segments for t in s.tokens] for r in requests]


def fixed_shape_decoder(backbone, rows: int) -> WhisperDecoder:
    """A decoder whose adapter-free steps run at CUDA-graph shapes (eagerly: this is the CPU)."""
    decoder = WhisperDecoder(backbone, max_rows=rows)
    decoder.runner.static_step = StaticStep(decoder.runner, capture=False)
    return decoder


def test_row_buckets_cover_every_row_count():
    assert buckets(32) == [1, 2, 4, 8, 16, 32]
    assert buckets(5) == [1, 2, 4, 5]
    assert buckets(1) == [1]
    assert all(next(b for b in buckets(12) if b >= n) >= n for n in range(1, 13))


def test_the_fixed_shape_step_chooses_the_dynamic_steps_tokens(tiny_backbone, audios):
    """Rows padded to a bucket, attention over the whole text context: the same tokens, greedy with and
    without timestamps and beam search, with rows joining and leaving a shared batch."""
    fixed, dynamic = fixed_shape_decoder(tiny_backbone, 12), WhisperDecoder(tiny_backbone, max_rows=12)
    for options, clips in ((DecodingOptions(**PLAIN), audios),
                           (DecodingOptions(without_timestamps=True, **PLAIN), audios),
                           (DecodingOptions(beam_size=3, **PLAIN), audios[:5])):
        slots = [0] * len(clips)
        assert decoded_tokens(fixed, clips, options, slots) == decoded_tokens(dynamic, clips, options, slots)
    assert fixed.runner.static_step.steps > 50


def test_steps_with_adapter_rows_stay_eager(adapted, audios):
    """A step holding an adapter row runs the dynamic step (graphs are recorded without a selection);
    plain rows beside it decode as before."""
    fixed, dynamic = fixed_shape_decoder(adapted, 8), WhisperDecoder(adapted, max_rows=8)
    options = DecodingOptions(**PLAIN)
    assert decoded_tokens(fixed, audios[:2], options, [1, 1]) == decoded_tokens(dynamic, audios[:2], options, [1, 1])
    assert fixed.runner.static_step.steps == 0
    slots = [0, 1, 0]
    assert decoded_tokens(fixed, audios[:3], options, slots) == decoded_tokens(dynamic, audios[:3], options, slots)


def test_tests_use_no_private_transformers_api():
    """The decoder no longer leans on transformers' internals, and neither do the tests."""
    root = Path(__file__).parents[1]
    offenders = []
    for path in root.rglob("*.py"):
        source = path.read_text()
        private = re.search(r"generate_with_fallback|from transformers[\w.]* import _|transformers\.[\w.]*\._\w", source)
        if private and path.name != Path(__file__).name:
            offenders.append(str(path.relative_to(root)))
    assert not offenders, offenders


# word timestamps -----------------------------------------------------------------------------------------
WORDS = ["please", "call", "stella", "and", "ask", "her", "to", "bring", "these", "things", "with", "her", "from", "the", "store"]


def _say(word: str) -> np.ndarray:
    """One word by espeak-ng, trimmed to where its sound starts and ends (-40 dB of its peak)."""
    import subprocess

    wav = subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "--stdout", word], check=True,
                         capture_output=True).stdout
    audio = decode_audio(wav)
    loud = np.flatnonzero(np.abs(audio) > np.abs(audio).max() * 0.01)
    return audio[loud[0]: loud[-1] + 1]


@pytest.mark.skipif(not __import__("shutil").which("espeak-ng"), reason="needs espeak-ng (scripts/install-system-deps.sh)")
def test_word_times_match_words_placed_at_known_times(tiny_backbone):
    rng = np.random.default_rng(3)
    pieces, starts, t = [np.zeros(int(0.5 * SAMPLE_RATE_HZ), np.float32)], [], 0.5
    for word in WORDS:
        audio = _say(word)
        starts.append(t)
        gap = rng.uniform(0.15, 0.6)
        pieces += [audio, np.zeros(int(gap * SAMPLE_RATE_HZ), np.float32)]
        t += len(audio) / SAMPLE_RATE_HZ + gap
    [result] = transcribe(tiny_backbone, [np.concatenate(pieces)], DecodingOptions(word_timestamps=True))
    words = [w for s in result.segments for w in s.words]
    for s in result.segments:
        assert s.words, s
        assert all(s.start - 0.01 <= w.start <= w.end <= s.end + 0.01 for w in s.words)
    assert all(a.start <= b.start and a.end <= b.end for a, b in itertools.pairwise(words)), "monotonic"
    said = [re.sub(r"[^a-z]", "", w.word.lower()) for w in words]
    errors, j = [], 0
    for word, start in zip(WORDS, starts):  # match the recognised words to the spoken ones, in order
        if word in said[j:]:
            j = said.index(word, j)
            errors.append(abs(words[j].start - start))
            j += 1
    assert len(errors) >= len(WORDS) * 0.7, (said, WORDS)
    assert float(np.median(errors)) <= 0.15, list(zip(said, [w.start for w in words]))
