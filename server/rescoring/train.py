"""Train a LoRB rescorer on N-best lists: MWER + correlation regularizer, dev early stopping, λ tuning.

Only the LoRA tensors (slot 1 of the encoder's bank) and the scoring head train; the encoder stays
frozen. Each step takes a few N-best lists, scores all their hypotheses in one forward pass, fuses
the scores with the ASR log-probabilities (λ = 1 while training) and minimises the expected word
errors under the softmax of the fused scores, plus ``correlation_weight`` times the correlation
regularizer on the pooled representations. After each epoch the fusion weights (λ, β) are tuned on
the dev lists by grid search and the dev WER of the rescored 1-best decides early stopping; epoch 0
(a rescorer that changes nothing) competes too, so the kept rescorer never does worse on dev.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

import torch
from tqdm.auto import tqdm

from ..adapters import new_adapter, set_trainable
from ..adapters.adapter import Adapter
from ..adapters.bank import bank_layers
from ..errors import InvalidInput
from .data import NBestList, rescorer_text
from .encoder import TextEncoder
from .losses import correlation_loss, mwer_loss
from .model import DEFAULT_TARGETS, POOLINGS, Fusion, Rescorer, ScoringModel, choose, encoder_targets, fuse

log = logging.getLogger(__name__)

SLOT = 1
FUSION_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
LENGTH_WEIGHTS = (0.0, -0.1, 0.1, -0.25, 0.25, -0.5, 0.5, 1.0)


@dataclass(frozen=True)
class RescorerTrainConfig:
    rank: int = 4
    alpha: float = 8.0
    targets: str = DEFAULT_TARGETS  # attn, ffn, qv presets or globs on the encoder's module names
    pooling: str = "mean"  # mean over tokens (how the MiniLM was trained) or the [CLS] vector
    epochs: int = 8
    lr: float = 2e-3
    lists_per_step: int = 8
    correlation_weight: float = 0.1
    seed: int = 0
    patience: int = 3  # epochs without dev improvement before stopping; 0 = never
    quiet: bool = False

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise InvalidInput(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        for name in ("rank", "epochs", "lists_per_step"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"{name} must be at least 1")
        if self.lr <= 0 or self.correlation_weight < 0:
            raise InvalidInput("lr must be > 0 and correlation_weight >= 0")


@dataclass
class RescorerTrainResult:
    rescorer: Rescorer
    summary: dict = field(default_factory=dict)


# scoring and fusion (pure list arithmetic) ----------------------------------------------------------
def score_lists(model: ScoringModel, lists: Sequence[NBestList], slot: int, batch_size: int = 64) -> list[list[float]]:
    """The rescorer score of every hypothesis, list by list."""
    texts = [rescorer_text(h) for x in lists for h in x.hyps]
    flat: list[float] = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            chunk = texts[i : i + batch_size]
            flat += model(chunk, [slot] * len(chunk))[0].tolist()
    out, i = [], 0
    for x in lists:
        out.append(flat[i : i + len(x.hyps)])
        i += len(x.hyps)
    return out


def corpus_wer(lists: Sequence[NBestList], picks: Sequence[int]) -> float:
    words = sum(x.ref_words for x in lists)
    return sum(x.errors[p] for x, p in zip(lists, picks)) / max(1, words)


def tune_fusion(lists: Sequence[NBestList], scores: Sequence[Sequence[float]]) -> tuple[Fusion, float]:
    """The (λ, β) of the grid with the lowest WER on ``lists``; ties go to the smaller weights."""
    best: tuple[float, float, float, Fusion] | None = None
    for weight, length in itertools.product(FUSION_WEIGHTS, LENGTH_WEIGHTS):
        fusion = Fusion(weight, length)
        wer = corpus_wer(lists, [choose(x, s, fusion) for x, s in zip(lists, scores)])
        key = (wer, weight, abs(length))
        if best is None or key < best[:3]:
            best = (*key, fusion)
    assert best is not None
    return best[3], best[0]


# training ---------------------------------------------------------------------------------------
def _padded(lists: Sequence[NBestList], flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
    k = max(len(x.hyps) for x in lists)
    scores = flat.new_zeros(len(lists), k)
    asr, lengths, errors = (torch.zeros(len(lists), k) for _ in range(3))
    mask = torch.zeros(len(lists), k, dtype=torch.bool)
    i = 0
    for row, x in enumerate(lists):
        n = len(x.hyps)
        scores[row, :n] = flat[i : i + n]
        asr[row, :n], lengths[row, :n] = torch.tensor(x.asr), torch.tensor(x.lengths, dtype=torch.float)
        errors[row, :n], mask[row, :n] = torch.tensor(x.errors, dtype=torch.float), True
        i += n
    return scores, asr, lengths, errors, mask


def batch_loss(model: ScoringModel, lists: Sequence[NBestList], slot: int,
               correlation_weight: float) -> tuple[torch.Tensor, float, float]:
    """(total loss, MWER part, correlation part) of one batch of lists."""
    texts = [rescorer_text(h) for x in lists for h in x.hyps]
    flat, pooled = model(texts, [slot] * len(texts))
    scores, asr, lengths, errors, mask = _padded(lists, flat)
    mwer = mwer_loss(fuse(asr, scores, lengths, Fusion(1.0, 0.0)), errors, mask)
    corr = correlation_loss(pooled) if correlation_weight > 0 and len(texts) > 2 else pooled.new_zeros(())
    return mwer + correlation_weight * corr, float(mwer.detach()), float(corr.detach())


def trainable_lists(lists: Sequence[NBestList]) -> list[NBestList]:
    """Lists that can teach something: at least two hypotheses with different error counts."""
    return [x for x in lists if len(x.hyps) > 1 and len(set(x.errors)) > 1]


def _fresh_lora(encoder: TextEncoder, config: RescorerTrainConfig) -> Adapter:
    from ..adapters import KindConfig

    targets = encoder_targets(encoder, config.targets)
    return new_adapter("lora", KindConfig(r=config.rank, alpha=config.alpha), targets, encoder.spec,
                       seed=config.seed, creator="splitasr rescorer train")


def build_model(encoder: TextEncoder, config: RescorerTrainConfig) -> tuple[ScoringModel, Adapter]:
    """A one-slot scoring model with a fresh rescorer (LoRA B = 0, head = 0: it changes nothing yet)."""
    lora = _fresh_lora(encoder, config)
    model = ScoringModel(encoder, lora.targets, num_slots=1, max_rank=config.rank)
    hidden = encoder.hidden_size
    model.load(SLOT, Rescorer(lora, torch.zeros(hidden), torch.zeros(1), pooling=config.pooling))
    return model, lora


def trainable_parameters(model: ScoringModel) -> list[torch.nn.Parameter]:
    params = set_trainable(model.encoder.model, ["lowrank"])
    for p in (model.head_weight, model.head_bias):
        p.requires_grad_(True)
    return params + [model.head_weight, model.head_bias]


def export(model: ScoringModel, template: Adapter, config: RescorerTrainConfig) -> tuple[Adapter, torch.Tensor, torch.Tensor]:
    layers = bank_layers(model.encoder.model)
    r = config.rank
    tensors = {m: {"lora_A": layers[m].lora_A[SLOT, 0, :r].detach().clone(),
                   "lora_B": layers[m].lora_B[SLOT, 0, :, :r].detach().clone()} for m in template.targets}
    lora = Adapter(kind="lora", config=template.config, tensors=tensors,
                   backbone_name=template.backbone_name, backbone_fingerprint=template.backbone_fingerprint,
                   created_at=_creation_time(), creator=template.creator)
    return lora, model.head_weight[SLOT].detach().clone(), model.head_bias[SLOT:SLOT + 1].detach().clone()


def _creation_time() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = datetime.fromtimestamp(int(epoch), timezone.utc) if epoch else datetime.now(timezone.utc)
    return when.isoformat(timespec="seconds")


def _dev_report(model: ScoringModel, dev: Sequence[NBestList]) -> tuple[Fusion, float, float]:
    scores = score_lists(model, dev, SLOT)
    fusion, wer = tune_fusion(dev, scores)
    with torch.no_grad():
        loss = float(batch_loss(model, dev, SLOT, 0.0)[1]) if trainable_lists(dev) else 0.0
    return fusion, wer, loss


def train_rescorer(encoder: TextEncoder, train: Sequence[NBestList], dev: Sequence[NBestList],
                   config: RescorerTrainConfig, asr_backbone: str = "") -> RescorerTrainResult:
    """Train on ``train`` lists, early-stop and tune fusion on ``dev`` (``train`` when ``dev`` is empty)."""
    torch.manual_seed(config.seed)
    usable = trainable_lists(train)
    if not usable:
        raise InvalidInput("no training list has hypotheses with different word errors: nothing to learn "
                           "(use more utterances or a larger --nbest)")
    tuning = list(dev) or list(train)
    model, template = build_model(encoder, config)
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = -(-len(usable) // config.lists_per_step)
    bar = tqdm(total=steps_per_epoch * config.epochs, desc="rescorer", unit="step", disable=config.quiet)
    began, cpu_began = time.perf_counter(), time.process_time()
    fusion, dev_wer, dev_loss = _dev_report(model, tuning)
    history = [{"epoch": 0, "dev_wer": round(dev_wer, 4), "dev_mwer": round(dev_loss, 4),
                "fusion": fusion.to_dict()}]
    best = (dev_wer, dev_loss, 0, export(model, template, config), fusion)
    since_best, steps = 0, 0
    for epoch in range(1, config.epochs + 1):
        order = torch.randperm(len(usable), generator=generator).tolist()
        totals = [0.0, 0.0]
        for i in range(0, len(order), config.lists_per_step):
            batch = [usable[j] for j in order[i : i + config.lists_per_step]]
            loss, mwer, corr = batch_loss(model, batch, SLOT, config.correlation_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            totals[0] += mwer * len(batch)
            totals[1] += corr * len(batch)
            bar.update(1)
            bar.set_postfix(mwer=f"{mwer:.3f}", corr=f"{corr:.3f}")
        fusion, dev_wer, dev_loss = _dev_report(model, tuning)
        history.append({"epoch": epoch, "train_mwer": round(totals[0] / len(usable), 4),
                        "train_corr": round(totals[1] / len(usable), 4), "dev_wer": round(dev_wer, 4),
                        "dev_mwer": round(dev_loss, 4), "fusion": fusion.to_dict()})
        if not config.quiet:
            bar.write(f"epoch {epoch}: train MWER {history[-1]['train_mwer']:.3f}, dev WER {dev_wer:.4f} "
                      f"(λ={fusion.weight:g}, β={fusion.length_weight:g})")
        if (dev_wer, dev_loss) < best[:2]:
            best, since_best = (dev_wer, dev_loss, epoch, export(model, template, config), fusion), 0
        else:
            since_best += 1
            if config.patience and since_best >= config.patience:
                break
    bar.close()
    _, _, best_epoch, (lora, head_w, head_b), best_fusion = best
    summary = {
        "train_lists": len(train), "trainable_lists": len(usable), "dev_lists": len(dev),
        "tuned_on": "dev" if dev else "train", "steps": steps, "epochs_run": len(history) - 1,
        "best_epoch": best_epoch, "dev_wer_before": history[0]["dev_wer"], "dev_wer_after": round(best[0], 4),
        "fusion": best_fusion.to_dict(), "fusion_without_rescorer": history[0]["fusion"], "wall_seconds": round(time.perf_counter() - began, 2),
        "cpu_seconds": round(time.process_time() - cpu_began, 2), "history": history,
        "config": {k: v for k, v in config.__dict__.items() if k != "quiet"},
    }
    rescorer = Rescorer(lora, head_w, head_b, pooling=config.pooling, fusion=best_fusion, asr_backbone=asr_backbone,
                        training={k: summary[k] for k in ("train_lists", "best_epoch", "dev_wer_before",
                                                          "dev_wer_after", "tuned_on", "fusion_without_rescorer")})
    return RescorerTrainResult(rescorer, summary)
