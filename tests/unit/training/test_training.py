"""Adapter training (splitasr.training): labels, caching, the loop's guarantees, reproducible files.

The loop runs on a tiny random Whisper (real tiny.en tokenizer and feature extractor, so real token ids
and real log-mels of the real-speech fixtures) to stay fast on a CPU.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

from splitasr.adapters import (
    AdapterLimits,
    BackboneSpec,
    adapter_to_bytes,
    attach_bank,
    bank_context,
    detach_bank,
    load_adapter,
    load_into_slot,
    save_adapter,
    utterance_embedding,
)
from splitasr.backbones.whisper import WhisperBackbone
from splitasr.datasets.manifest import load_manifest
from splitasr.errors import InvalidInput
from splitasr.training.data import (
    IGNORE_INDEX,
    decoder_prefix,
    encoder_output,
    first_adapted_layer,
    pad_labels,
    prepare,
    restore_casing,
    target_text,
    token_sequence,
)
from splitasr.training.train import TrainConfig, dev_loss, resolve_stage, train_adapter

REAL_SPEECH = Path(__file__).resolve().parents[2] / "data" / "real-speech" / "manifest.jsonl"
FAST = TrainConfig(epochs=3, lr=3e-2, batch_size=2, rank=4, patience=0, quiet=True, created_at="2026-01-01T00:00:00+00:00")


@pytest.fixture(scope="module")
def random_backbone(tiny_backbone: WhisperBackbone) -> WhisperBackbone:
    """A 2+2-layer, 32-wide random Whisper with tiny.en's vocabulary, tokenizer and feature extractor."""
    real = tiny_backbone.model.config
    config = WhisperConfig(
        vocab_size=real.vocab_size, num_mel_bins=real.num_mel_bins, d_model=32, encoder_layers=2,
        decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_ffn_dim=64, max_source_positions=real.max_source_positions,
        max_target_positions=real.max_target_positions, pad_token_id=real.pad_token_id,
        bos_token_id=real.bos_token_id, eos_token_id=real.eos_token_id,
        decoder_start_token_id=real.decoder_start_token_id,
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval().requires_grad_(False)
    model.generation_config = copy.deepcopy(tiny_backbone.model.generation_config)
    return WhisperBackbone("tiny-random", model, tiny_backbone.tokenizer, tiny_backbone.feature_extractor)


@pytest.fixture(scope="module")
def utterances():
    rows = load_manifest(REAL_SPEECH)
    return rows[1:5], rows[5:7]  # short ones: 4 to train, 2 to stop on


def test_restore_casing_gives_normalised_text_whisper_style() -> None:
    assert restore_casing("i think i'm fine") == "I think I'm fine."
    assert restore_casing("go forward ten meters") == "Go forward ten meters."
    assert restore_casing("Already Cased.") == "Already Cased."  # not normalised: unchanged
    assert restore_casing("ok, then") == "ok, then"
    assert target_text("  go forward ", "keep") == "go forward"
    with pytest.raises(InvalidInput):
        target_text("x", "shout")


def test_labels_are_shifted_and_skip_prefix_and_padding(tiny_backbone: WhisperBackbone) -> None:
    gen = tiny_backbone.model.generation_config
    assert decoder_prefix(tiny_backbone, "en") == [gen.decoder_start_token_id, gen.no_timestamps_token_id]
    long, n = token_sequence(tiny_backbone, "Go forward ten meters.", "en")
    short, _ = token_sequence(tiny_backbone, "Hi.", "en")
    assert n == 2 and long[-1] == gen.eos_token_id
    assert tiny_backbone.tokenizer.decode(long[n:-1]) == " Go forward ten meters."  # leading space, as Whisper
    inputs, labels = pad_labels([(long, n), (short, n)], pad_id=gen.eos_token_id)
    assert inputs.shape == labels.shape == (2, len(long) - 1)
    assert inputs[0].tolist() == long[:-1]
    assert labels[0].tolist() == [IGNORE_INDEX] * (n - 1) + long[n:]  # position t predicts token t + 1
    assert labels[1].tolist() == [IGNORE_INDEX] * (n - 1) + short[n:] + [IGNORE_INDEX] * (len(long) - len(short))


def test_cached_encoder_state_gives_the_full_encoder_output(random_backbone: WhisperBackbone, utterances) -> None:
    train, _ = utterances
    model = random_backbone.model
    assert first_adapted_layer(["model.decoder.layers.0.fc1"], 2) == 2
    for targets, start in ((["model.encoder.layers.1.fc1", "model.decoder.layers.0.fc1"], 1),
                           (["model.decoder.layers.0.fc1"], 2), (["model.encoder.layers.0.fc2"], 0)):
        examples = prepare(random_backbone, train[:2], targets=targets)
        assert examples.start_layer == start
        with torch.no_grad():
            full = model.get_encoder()(examples.features).last_hidden_state
            assert torch.equal(encoder_output(model, examples, torch.arange(2)), full)


def test_training_lowers_the_loss_and_changes_only_the_adapter(random_backbone: WhisperBackbone, utterances) -> None:
    train, dev = utterances
    model = random_backbone.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train_adapter(random_backbone, train, dev, replace(FAST, targets="all"))
    losses = result.step_losses  # 3 epochs × 2 steps; a random model starts near ln(vocab) ≈ 10.9
    assert len(losses) == 6 and sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.1, losses
    # the backbone is bit-identical, frozen, and has no bank left
    assert not hasattr(model, "splitasr_adapters")
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in model.parameters())
    # the adapter did change, and the report adds up
    assert any(torch.count_nonzero(g["lora_B"]) for g in result.adapter.tensors.values())
    assert result.trainable_parameters == result.adapter_parameters == result.adapter.num_parameters()
    assert result.dev_metric == "wer" and result.dev_before is not None and len(result.history) == 4
    assert result.history[result.best_epoch].dev_error == result.dev_after


def test_same_seed_gives_an_identical_file(random_backbone: WhisperBackbone, utterances, monkeypatch) -> None:
    train, _ = utterances  # no dev set: every epoch runs and the last one is kept
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    config = replace(FAST, epochs=2, created_at=None)
    first = adapter_to_bytes(train_adapter(random_backbone, train, [], config).adapter)
    second = adapter_to_bytes(train_adapter(random_backbone, train, [], config).adapter)
    other = adapter_to_bytes(train_adapter(random_backbone, train, [], replace(config, seed=1)).adapter)
    assert first == second
    assert first != other
    assert b"2026-01-01T00:00:00+00:00" in first  # created_at from SOURCE_DATE_EPOCH


def test_saved_adapter_reloads_with_the_trained_logits(random_backbone: WhisperBackbone, utterances,
                                                       tmp_path: Path) -> None:
    train, dev = utterances
    model = random_backbone.model
    result = train_adapter(random_backbone, train, dev, replace(FAST, kind="glora", gate="lowrank", epochs=2))
    path = save_adapter(tmp_path / "user.safetensors", result.adapter)
    spec = BackboneSpec.from_model(random_backbone.name, model)
    loaded = load_adapter(path, expected_backbone=spec)
    assert loaded.kind == "glora" and loaded.creator == "splitasr train"
    examples = prepare(random_backbone, dev, targets=loaded.targets)
    attach_bank(model, loaded.targets, num_slots=2, limits=AdapterLimits(max_rank=4, max_experts=1), kinds=["glora"])
    try:
        load_into_slot(model, 1, result.adapter)
        load_into_slot(model, 2, loaded)
        # the dev loss of the kept epoch, measured during training, is reproduced by the file
        assert dev_loss(model, examples, model.generation_config.eos_token_id, 2) == pytest.approx(
            result.history[result.best_epoch].dev_loss, rel=1e-5)
        ids = torch.tensor([decoder_prefix(random_backbone, "en")] * 2)
        feats = examples.features
        logits = []
        for slot in (1, 2):
            with torch.no_grad(), bank_context(model, slots=[slot, slot], utterance_embedding=utterance_embedding(feats)):
                logits.append(model(input_features=feats, decoder_input_ids=ids).logits)
        assert torch.equal(logits[0], logits[1])
    finally:
        detach_bank(model)


def test_saml_pretrain_then_adapt_trains_only_the_router(random_backbone: WhisperBackbone, utterances,
                                                        tmp_path: Path) -> None:
    train, _ = utterances
    config = replace(FAST, kind="saml", rank=2, experts=3, epochs=2)
    pretrained = train_adapter(random_backbone, train, [], config)
    assert pretrained.stage == "pretrain" and pretrained.dev_before is None and pretrained.best_epoch == 2
    path = save_adapter(tmp_path / "saml.safetensors", pretrained.adapter)
    adapted = train_adapter(random_backbone, train[:2], [], replace(config, init=path))
    assert adapted.stage == "adapt"
    assert adapted.trainable_parameters == 3 * (2 * 80 + 1)  # router: E × (2·n_mels) weights + E biases
    for module, group in adapted.adapter.tensors.items():
        for suffix, tensor in group.items():
            assert torch.equal(tensor, pretrained.adapter.tensors[module][suffix]), (module, suffix)
    router = "router.weight"
    assert not torch.equal(adapted.adapter.global_tensors[router], pretrained.adapter.global_tensors[router])
    full = resolve_stage(replace(config, init=path, adapt_experts=True), "saml")
    assert full == "adapt_full"
    with pytest.raises(InvalidInput, match="no training stage"):
        resolve_stage(replace(FAST, stage="adapt"), "lora")


def test_micro_batches_give_the_same_gradient(random_backbone: WhisperBackbone, utterances) -> None:
    from splitasr.adapters import set_trainable, stage_families
    from splitasr.training.train import SLOT, accumulate, initial_adapter

    train, _ = utterances
    model = random_backbone.model
    spec = BackboneSpec.from_model(random_backbone.name, model)
    adapter = initial_adapter(replace(FAST, targets="all"), spec)
    for tensors in adapter.tensors.values():  # B starts at zero: make every gradient non-trivial
        tensors["lora_B"].normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    examples = prepare(random_backbone, train, targets=adapter.targets)
    attach_bank(model, adapter.targets, num_slots=1, limits=AdapterLimits(max_rank=4), kinds=["lora"])
    try:
        load_into_slot(model, SLOT, adapter)
        params = set_trainable(model, stage_families("lora", "train"))
        pad = model.generation_config.eos_token_id
        grads = []
        for micro in (None, 1, 3):
            for param in params:
                param.grad = None
            loss = accumulate(model, examples, torch.arange(4), pad, micro)
            grads.append(([p.grad.clone() for p in params], loss))
    finally:
        detach_bank(model)
        model.requires_grad_(False)
    (whole, whole_loss), *others = grads
    for parts, loss in others:
        assert loss == pytest.approx(whole_loss, rel=1e-6)
        assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-8) for a, b in zip(whole, parts))
    with pytest.raises(InvalidInput, match="micro_batch_size"):
        TrainConfig(micro_batch_size=0)


def test_progress_is_reported_per_step_and_epoch(random_backbone: WhisperBackbone, utterances) -> None:
    train, dev = utterances
    events: list[tuple[str, dict]] = []
    train_adapter(random_backbone, train, dev, replace(FAST, epochs=1, batch_size=4),
                  on_progress=lambda e, f: events.append((e, f)))
    assert [e for e, _ in events] == ["prepared", "epoch", "step", "epoch"]
    assert events[0][1] == {"train_utterances": 4, "dev_utterances": 2, "dev_metric": "wer", "epochs": 1, "steps": 1}
    assert events[1][1]["epoch"] == 0 and events[1][1]["dev_error"] is not None
    assert events[2][1]["step"] == events[2][1]["steps"] == 1 and events[3][1]["epoch"] == 1


def test_an_exception_from_the_progress_callback_stops_training_cleanly(random_backbone: WhisperBackbone,
                                                                         utterances) -> None:
    train, dev = utterances

    def stop(event: str, fields: dict) -> None:
        if event == "step":
            raise KeyboardInterrupt  # what a cancelled job raises, in spirit

    with pytest.raises(KeyboardInterrupt):
        train_adapter(random_backbone, train, dev, replace(FAST, targets="all"), on_progress=stop)
    assert not hasattr(random_backbone.model, "splitasr_adapters")
    assert not any(p.requires_grad for p in random_backbone.model.parameters())
