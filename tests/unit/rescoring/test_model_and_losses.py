"""LoRB rescorer: LoRA wiring and scoring head against a merged-weights reference; MWER and the
correlation regularizer on hand-made N-best lists; score fusion and tuning."""

from __future__ import annotations

import math

import pytest
import torch

from splitasr.adapters import KindConfig, new_adapter
from splitasr.rescoring.data import make_list, word_errors
from splitasr.rescoring.losses import correlation_loss, correlation_matrix, mwer_loss
from splitasr.rescoring.model import Fusion, Rescorer, ScoringModel, choose, encoder_targets, fuse
from splitasr.rescoring.train import RescorerTrainConfig, train_rescorer, tune_fusion
from tests.adapter_factory import lora_delta_w

from .conftest import random_rescorer, tiny_encoder

TEXTS = ["start the heparin drip", "start the hepburn drip now", "the troponin came back elevated"]


# model ------------------------------------------------------------------------------------------
def reference_scores(encoder, rescorer: Rescorer, texts: list[str]) -> torch.Tensor:
    """Plain BertModel with W0 + s·B·A merged into every target linear, mean pooling, linear head."""
    import copy

    from transformers import BertModel

    plain = BertModel(encoder.model.config, add_pooling_layer=False).eval()
    plain.load_state_dict({k.replace(".base_layer", ""): v for k, v in encoder.model.state_dict().items()
                           if "lora_" not in k and "gate_" not in k and "splitasr_adapters" not in k}, strict=True)
    plain = copy.deepcopy(plain)
    with torch.no_grad():
        for module, tensors in rescorer.lora.tensors.items():
            plain.get_submodule(module).weight += lora_delta_w(rescorer.lora.config, tensors)
        batch = encoder.tokenize(texts)
        hidden = plain(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        return pooled @ rescorer.head_weight + rescorer.head_bias


def test_scores_match_merged_reference_per_slot():
    encoder = tiny_encoder()
    targets = encoder_targets(encoder, "attn,ffn")
    assert len(targets) == 6 * encoder.model.config.num_hidden_layers
    model = ScoringModel(encoder, targets, num_slots=2, max_rank=4)
    first, second = random_rescorer(encoder, targets, seed=1), random_rescorer(encoder, targets, seed=2, rank=2)
    model.load(1, first)
    model.load(2, second)
    scores, _ = model(TEXTS + TEXTS, [1, 1, 1, 2, 2, 2])
    torch.testing.assert_close(scores[:3], reference_scores(encoder, first, TEXTS), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(scores[3:], reference_scores(encoder, second, TEXTS), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(scores[:3], scores[3:])
    empty, _ = model(TEXTS, [0, 0, 0])  # slot 0: no LoRA, zero head
    assert torch.equal(empty, torch.zeros(3))


def test_fresh_rescorer_changes_nothing_and_only_lora_and_head_train():
    from splitasr.rescoring.train import build_model, trainable_parameters

    encoder = tiny_encoder()
    model, lora = build_model(encoder, RescorerTrainConfig(rank=2, targets="qv"))
    scores, _ = model(TEXTS, [1, 1, 1])
    assert torch.equal(scores, torch.zeros(3))
    params = trainable_parameters(model)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n or n.startswith("head_") for n in names)
    assert sum(p.numel() for p in params) == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert len(lora.targets) == 2 * encoder.model.config.num_hidden_layers


# losses -----------------------------------------------------------------------------------------
def test_mwer_value_and_gradient_by_hand():
    scores = torch.tensor([[0.0, math.log(3.0)]], requires_grad=True)  # p = [1/4, 3/4]
    errors = torch.tensor([[2.0, 0.0]])
    loss = mwer_loss(scores, errors)
    # mean error 1: 1/4 · (2 − 1) + 3/4 · (0 − 1) = −0.5
    assert loss.item() == pytest.approx(-0.5)
    loss.backward()
    # d/ds_k Σ p_j e_j = p_k (e_k − Σ p_j e_j): Σ p e = 0.5 → [1/4 · 1.5, 3/4 · −0.5]
    torch.testing.assert_close(scores.grad, torch.tensor([[0.375, -0.375]]))


def test_mwer_ignores_padding_and_averages_lists():
    scores = torch.tensor([[1.0, 2.0, 99.0], [0.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    errors = torch.tensor([[1.0, 3.0, 0.0], [0.0, 2.0, 4.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    p = torch.softmax(torch.tensor([1.0, 2.0], dtype=torch.float64), 0)
    first = float(p[0] * (1 - 2) + p[1] * (3 - 2))
    assert mwer_loss(scores, errors, mask).item() == pytest.approx((first + 0.0) / 2)
    assert torch.autograd.gradcheck(lambda s: mwer_loss(s, errors, mask), (scores,))
    mwer_loss(scores, errors, mask).backward()
    assert scores.grad[0, 2] == 0  # a padded hypothesis gets no gradient


def test_correlation_regularizer_known_values():
    decorrelated = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert correlation_loss(decorrelated).item() == pytest.approx(0.0, abs=1e-6)
    identical = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])  # corr = all ones: two off-diagonal 1s
    assert correlation_loss(identical).item() == pytest.approx(2 / 4, rel=1e-5)
    opposite = torch.tensor([[1.0, -1.0], [2.0, -2.0], [4.0, -4.0]])
    torch.testing.assert_close(correlation_matrix(opposite), torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    assert torch.autograd.gradcheck(correlation_loss, (x,))


# fusion, lists ------------------------------------------------------------------------------------
def test_fusion_and_choice():
    x = make_list("the troponin came back", ["the tropo nin came back", "the troponin came back"], [-2.0, -3.0], [6, 6])
    assert x.errors == [2, 0] and x.ref_words == 4 and x.oracle == 0
    assert choose(x, [0.0, 0.0], Fusion(1.0, 0.0)) == 0  # the ASR score alone keeps the first
    assert choose(x, [0.0, 1.5], Fusion(1.0, 0.0)) == 1
    assert choose(x, [0.0, 1.5], Fusion(0.5, 0.0)) == 0
    fused = fuse(torch.tensor([-2.0]), torch.tensor([4.0]), torch.tensor([5.0]), Fusion(0.5, 0.1))
    assert fused.item() == pytest.approx(-2.0 + 2.0 + 0.5)
    fusion, wer = tune_fusion([x], [[0.0, 1.5]])
    assert wer == 0.0 and fusion.weight == 1.0  # the smallest λ that flips the choice
    assert word_errors(["a", "b", "c"], ["a", "x", "c", "d"]) == 2


def test_training_lowers_dev_errors_on_separable_lists():
    encoder = tiny_encoder()
    pairs = [("the heparin drip is running", "the hepburn drip is running"),
             ("check the troponin level", "check the trooping level"),
             ("the heparin bolus went in", "the hepburn bolus went in"),
             ("repeat the troponin at noon", "repeat the trooping at noon")]
    lists = [make_list(good, [bad, good], [-1.0, -1.5], [6, 6]) for good, bad in pairs]
    result = train_rescorer(encoder, lists * 2, lists, RescorerTrainConfig(epochs=6, lr=1e-2, quiet=True, patience=0))
    s = result.summary
    assert s["dev_wer_before"] > 0 and s["dev_wer_after"] < s["dev_wer_before"]
    assert s["best_epoch"] >= 1 and s["fusion"]["weight"] > 0
    assert len(s["history"]) == 7 and all("train_mwer" in h for h in s["history"][1:])


def test_new_adapter_on_encoder_is_plain_lora():
    encoder = tiny_encoder()
    lora = new_adapter("lora", KindConfig(r=2, alpha=4.0), encoder_targets(encoder, "qv"), encoder.spec)
    assert lora.backbone_fingerprint == encoder.spec.fingerprint
