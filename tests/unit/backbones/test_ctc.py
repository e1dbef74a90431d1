"""Conformer/CTC backbones: greedy CTC decoding against references, loading, and every adapter kind
training and round-tripping on a tiny random Wav2Vec2ConformerForCTC (fp32 and NF4)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from splitasr.adapters import (
    AdapterLimits,
    BackboneSpec,
    adapter_to_bytes,
    attach_bank,
    export_slot,
    get_kind,
    load_adapter,
    load_into_slot,
    new_adapter,
    resolve_targets,
    set_trainable,
    stage_families,
)
from splitasr.backbones.ctc import CTCBackbone, ctc_loss, greedy_ctc
from splitasr.backbones.loader import load_backbone
from splitasr.decoding import DecodingOptions, transcribe
from splitasr.decoding.ctc import ctc_logits
from splitasr.errors import InvalidAdapter, InvalidInput

from .conftest import tiny_whisper

KINDS = {
    "lora": ("lora", {"r": 4, "alpha": 8.0}, "attn"),
    "glora-lowrank": ("glora", {"r": 4, "alpha": 8.0, "gate": "lowrank"}, "ffn"),
    "glora-output": ("glora", {"r": 3, "alpha": 6.0, "gate": "output"}, "all"),
    "saml": ("saml", {"r": 2, "alpha": 4.0, "experts": 3, "router_dim": 160}, "encoder"),
}
LIMITS = AdapterLimits(max_rank=4, max_experts=3)
TEXTS = ["HELLO WORLD", "A CAT"]


def audios(seconds: tuple[float, ...] = (1.0, 0.6), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(int(s * 16000)) * 0.1).astype(np.float32) for s in seconds]


def reference_best_path(log_probs: torch.Tensor, length: int, blank: int) -> list[int]:
    """The most probable frame path by exhaustive search, then merge repeats and drop blanks."""
    vocab = log_probs.shape[-1]
    best = max(itertools.product(range(vocab), repeat=length),
               key=lambda path: sum(float(log_probs[t, k]) for t, k in enumerate(path)))
    return [k for k, _ in itertools.groupby(best) if k != blank]


def test_greedy_ctc_matches_exhaustive_best_path():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 6, 3, generator=gen).log_softmax(-1)
    lengths = [6, 4, 5, 1]
    decoded = greedy_ctc(logits, lengths, blank=0)
    for row, length in enumerate(lengths):
        assert [t for t, _ in decoded[row]] == reference_best_path(logits[row], length, blank=0)


def test_greedy_ctc_keeps_a_repeat_separated_by_blank():
    frames = [1, 1, 0, 1, 2, 2, 0]  # "a a _ a b b _" -> "a a b"
    logits = torch.nn.functional.one_hot(torch.tensor([frames]), 3).float()
    assert greedy_ctc(logits, [7], blank=0) == [[(1, 0), (1, 3), (2, 4)]]


@pytest.fixture(scope="module")
def backbone(ctc_dir, tmp_path_factory) -> CTCBackbone:
    loaded = load_backbone(str(ctc_dir), cache_dir=tmp_path_factory.mktemp("cache"), device="cpu")
    assert isinstance(loaded, CTCBackbone)
    return loaded


def test_transcripts_match_the_tokenizers_own_ctc_grouping(backbone):
    batch = audios((1.0, 0.6, 0.3))
    with torch.inference_mode():
        logits, lengths = ctc_logits(backbone, batch)
    ids = logits.argmax(-1)
    for row, length in enumerate(lengths.tolist()):
        ids[row, length:] = backbone.blank_id
    # HF's CTC decoding groups repeats and drops the blank; special tokens are removed afterwards (removing
    # them first would merge the letters around them, which CTC does not)
    expected = backbone.tokenizer.batch_decode(ids)
    for special in backbone.tokenizer.all_special_tokens:
        expected = [e.replace(special, "") for e in expected]
    got = [r.text for r in transcribe(backbone, batch)]
    assert got == [e.strip() for e in expected]
    assert any(got)  # a random model still emits characters


def test_ctc_decoding_options_and_segments(backbone):
    long = audios((31.0,))[0]  # two pieces of at most 30 s
    result = transcribe(backbone, [long])[0]
    assert result.duration == pytest.approx(31.0)
    assert len(result.segments) == 2 and result.segments[1].start >= 30.0
    assert result.segments[-1].end <= 31.0
    assert result.text == " ".join(s.text for s in result.segments)
    with pytest.raises(InvalidInput, match="CTC"):
        transcribe(backbone, audios(), DecodingOptions(beam_size=2))
    with pytest.raises(InvalidInput, match="CTC"):
        transcribe(backbone, audios(), DecodingOptions(nbest=3))
    with pytest.raises(InvalidInput, match="log-probabilities are not available"):
        transcribe(backbone, audios(), DecodingOptions(logprobs=True))
    from splitasr.engine.applicability import check_options

    with pytest.raises(InvalidInput, match="include") as caught:
        check_options(backbone, DecodingOptions(logprobs=True))
    assert caught.value.param == "include[]"


def test_presets_cover_conformer_linears(backbone):
    spec = BackboneSpec.from_model(backbone.name, backbone.model)
    names = resolve_targets("all", spec.linear_shapes)
    assert names == resolve_targets("encoder", spec.linear_shapes)
    assert len(names) == 2 * 8  # 2 layers x (q, k, v, out + two feed-forward modules x 2)
    assert "lm_head" not in names and not any("linear_pos" in n for n in names)
    assert spec.router_dim == 160
    with pytest.raises(InvalidInput, match="decoder"):
        resolve_targets("decoder", spec.linear_shapes)


def test_whisper_adapter_is_rejected_on_a_ctc_backbone(backbone):
    whisper_spec = BackboneSpec.from_model("tiny.en", tiny_whisper(0))
    adapter = new_adapter("lora", get_kind("lora").make_config(r=2, alpha=4.0),
                          resolve_targets("attn", whisper_spec.linear_shapes), whisper_spec)
    ctc_spec = BackboneSpec.from_model(backbone.name, backbone.model)
    with pytest.raises(InvalidAdapter, match=r"trained for backbone 'tiny.en'.*runs 'random-conformer'"):
        load_adapter(adapter_to_bytes(adapter), expected_backbone=ctc_spec)


@pytest.mark.parametrize("quantize", ["none", "nf4"])
@pytest.mark.parametrize("case", sorted(KINDS))
def test_every_kind_trains_and_round_trips_on_ctc(ctc_dir, tmp_path, case, quantize):
    if quantize == "nf4":
        pytest.importorskip("bitsandbytes")
    kind, hyper, targets = KINDS[case]
    backbone = load_backbone(str(ctc_dir), cache_dir=tmp_path, device="cpu", quantize=quantize)
    spec = BackboneSpec.from_model(backbone.name, backbone.model)
    adapter = new_adapter(kind, get_kind(kind).make_config(**hyper), resolve_targets(targets, spec.linear_shapes),
                          spec, seed=1)
    attach_bank(backbone.model, adapter.targets, num_slots=1, limits=LIMITS, kinds=[kind])
    load_into_slot(backbone.model, 1, adapter)
    params = set_trainable(backbone.model, stage_families(kind, next(iter(get_kind(kind).stages))))
    optimizer = torch.optim.Adam(params, lr=3e-2)
    batch = audios()
    losses = []
    for _ in range(5):
        loss = ctc_loss(backbone, batch, TEXTS, slot=1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    with torch.no_grad():
        expected = ctc_loss(backbone, batch, TEXTS, slot=1).item()
    data = adapter_to_bytes(export_slot(backbone.model, 1))
    fresh = load_backbone(str(ctc_dir), cache_dir=tmp_path, device="cpu", quantize=quantize)
    fresh_spec = BackboneSpec.from_model(fresh.name, fresh.model)
    assert fresh_spec.fingerprint == spec.fingerprint
    reloaded = load_adapter(data, expected_backbone=fresh_spec, limits=LIMITS)
    attach_bank(fresh.model, "all", num_slots=2, limits=LIMITS)
    load_into_slot(fresh.model, 2, reloaded)
    with torch.no_grad():
        assert ctc_loss(fresh, batch, TEXTS, slot=2).item() == pytest.approx(expected, rel=1e-4)
        assert ctc_loss(fresh, batch, TEXTS, slot=0).item() != pytest.approx(expected, rel=1e-4)


def test_random_ctc_command_writes_a_loadable_backbone(tmp_path):
    from splitasr.cli import main

    assert main(["models", "random-ctc", str(tmp_path / "m"), "--seed", "3"]) == 0
    backbone = load_backbone(str(tmp_path / "m"), cache_dir=tmp_path, device="cpu")
    assert isinstance(backbone, CTCBackbone)


def write_random_parakeet(out: Path) -> Path:
    """A tiny random ParakeetForCTC (FastConformer) with a character tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import ParakeetCTCConfig, ParakeetFeatureExtractor, ParakeetForCTC, ParakeetTokenizer

    vocab = {"<unk>": 0, "▁": 1, **{c: i + 2 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz'")}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    config = ParakeetCTCConfig(vocab_size=len(vocab) + 1, pad_token_id=len(vocab), encoder_config={
        "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "subsampling_conv_channels": 8, "num_mel_bins": 80})
    torch.manual_seed(1)
    model = ParakeetForCTC(config)
    with torch.no_grad():  # make the blank rarer, so the random model emits characters
        model.ctc_head.bias[len(vocab)] -= 5.0
    model.save_pretrained(out)
    ParakeetFeatureExtractor().save_pretrained(out)
    ParakeetTokenizer(tokenizer_object=tok, unk_token="<unk>").save_pretrained(out)
    return out


def test_parakeet_ctc_decodes_like_its_own_generate(tmp_path):
    backbone = load_backbone(str(write_random_parakeet(tmp_path / "parakeet")), cache_dir=tmp_path, device="cpu")
    assert isinstance(backbone, CTCBackbone)
    batch = audios((1.0, 0.5))
    with torch.inference_mode():
        inputs = backbone.inputs(batch)
        frames = backbone.model.generate(**inputs)  # transformers' own greedy CTC: per-frame argmax
        logits, lengths = ctc_logits(backbone, batch)
    ours = greedy_ctc(logits, lengths.tolist(), backbone.blank_id)
    for row, length in enumerate(lengths.tolist()):
        reference = [k for k, _ in itertools.groupby(frames[row, :length].tolist()) if k != backbone.blank_id]
        assert [t for t, _ in ours[row]] == reference
    assert any(ours)
    spec = BackboneSpec.from_model(backbone.name, backbone.model)
    assert len(resolve_targets("all", spec.linear_shapes)) == 2 * 8 and spec.router_dim == 160
