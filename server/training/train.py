"""Train one personal adapter on a frozen Whisper backbone: ``train_adapter(backbone, train, dev, config)``.

The loop uses the serving math: the backbone gets an :class:`~splitasr.adapters.AdapterBank` with one
real slot, the adapter (fresh, or ``init`` from a file) is loaded into slot 1, and only the bank
families of the training stage get gradients (:func:`~splitasr.adapters.set_trainable`). The loss is
Whisper's teacher-forced cross-entropy on the reference tokens after the forced prefix
``[sot, (<|lang|>, <|transcribe|>,) <|notimestamps|>]``.

Speed on a CPU: log-mels are computed once per run, and so is the frozen encoder up to the first encoder
layer the adapter touches: with decoder-only targets the encoder runs once per utterance, not per step.

Early stopping: after every epoch the dev set is decoded greedily with slot 1 (without timestamps, as
trained; ``splitasr eval`` decodes with them) and scored (WER; MER for non-English). The best epoch by (dev error, dev loss) is
kept, epoch 0 (the untouched backbone) included, and training stops after ``patience`` epochs without
improvement. Runs are deterministic for a seed: same seed, same data, same thread count → the same
adapter bytes (``created_at`` comes from ``SOURCE_DATE_EPOCH`` when set, for bit-identical files).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..adapters import (
    Adapter,
    AdapterLimits,
    BackboneSpec,
    attach_bank,
    bank_context,
    detach_bank,
    export_slot,
    get_kind,
    load_adapter,
    load_into_slot,
    new_adapter,
    resolve_targets,
    set_trainable,
    stage_families,
)
from ..adapters.context import STATE_MODULE_NAME
from ..backbones.whisper import WhisperBackbone
from ..datasets.manifest import Utterance
from ..decoding import DecodingOptions, transcribe
from ..errors import InvalidInput
from .data import CASINGS, Examples, batch_order, encoder_output, pad_labels, prepare

log = logging.getLogger(__name__)

SLOT = 1  # the one real slot of the training bank
CREATOR = "splitasr train"

# on_progress(event, fields): "prepared" {train_utterances, dev_utterances, dev_metric, epochs, steps}, then "epoch"
# (an EpochLog as a dict; epoch 0 is the untouched backbone) and "step" {epoch, step, steps, loss}. An
# exception it raises (e.g. a cancelled job) ends training, with the backbone left as it was.
ProgressCallback = Callable[[str, dict], None]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (the CLI flags of ``splitasr train``)."""

    kind: str = "lora"  # lora | glora | saml
    rank: int = 8
    alpha: float | None = None  # None: 2 × rank (LoRA scale α/r = 2 at every rank)
    targets: str = "all"  # preset / globs; "decoder" trains ~6x faster on a CPU (encoder run once) but adapts less
    gate: str = "lowrank"  # glora: lowrank | output
    experts: int = 4  # saml
    top_k: int | None = None  # saml
    stage: str | None = None  # None: "train" (lora/glora), "pretrain" (saml), "adapt" (saml with init)
    adapt_experts: bool = False  # saml adapt: train the experts too ("adapt_full")
    init: Path | None = None  # start from this adapter file instead of a fresh one
    epochs: int = 10
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup: float = 0.1  # fraction of the steps with a linear warm-up, then linear decay to 0
    batch_size: int = 8
    # None: each batch in one pass; n: in passes of n utterances with the gradients summed (the same
    # update, a fraction of the activation memory: what adapting encoder layers costs)
    micro_batch_size: int | None = None
    max_grad_norm: float = 1.0
    seed: int = 0
    patience: int = 3  # epochs without dev improvement before stopping; <= 0: never stop early
    casing: str = "restore"  # restore | keep: target text for normalised references (see data.restore_casing)
    quiet: bool = False  # no progress bar or epoch lines
    created_at: str | None = None  # None: SOURCE_DATE_EPOCH if set, else now

    def __post_init__(self) -> None:
        for name in ("rank", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise InvalidInput(f"micro_batch_size must be >= 1, got {self.micro_batch_size}")
        if not self.lr > 0:
            raise InvalidInput(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup < 1:
            raise InvalidInput(f"warmup must be a fraction in [0, 1), got {self.warmup}")
        if self.casing not in CASINGS:
            raise InvalidInput(f"casing must be one of {', '.join(CASINGS)}, got {self.casing!r}")


@dataclass
class EpochLog:
    epoch: int
    train_loss: float | None  # mean over the epoch's steps (None for epoch 0)
    dev_loss: float | None
    dev_error: float | None
    seconds: float


@dataclass
class TrainResult:
    """The trained adapter (best epoch) and what the run measured."""

    adapter: Adapter
    stage: str
    trainable_parameters: int  # what this stage trained
    adapter_parameters: int  # what the file stores
    train_utterances: int
    train_audio_seconds: float
    dev_utterances: int
    dev_metric: str | None  # "wer", or "mer" for non-English dev sets
    dev_before: float | None  # the backbone alone
    dev_after: float | None  # the kept epoch
    best_epoch: int
    epochs_run: int
    steps: int
    encoder_layers_cached: int  # frozen encoder layers run once per utterance instead of every step
    wall_seconds: float
    cpu_seconds: float  # process CPU time, all threads (robust to other load on a shared machine)
    prepare_seconds: float
    step_losses: list[float] = field(default_factory=list)
    history: list[EpochLog] = field(default_factory=list)

    def summary(self) -> dict:
        """JSON-ready report (no tensors)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("adapter", "step_losses", "history")}
        out.update(kind=self.adapter.kind, hyperparameters=self.adapter.config.to_dict(),
                   targets=len(self.adapter.targets), history=[asdict(h) for h in self.history])
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def _creation_time(config: TrainConfig) -> str:
    if config.created_at is not None:
        return config.created_at
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = datetime.fromtimestamp(int(epoch), timezone.utc) if epoch else datetime.now(timezone.utc)
    return moment.isoformat(timespec="seconds")


def initial_adapter(config: TrainConfig, spec: BackboneSpec) -> Adapter:
    """The adapter training starts from: ``config.init`` loaded and checked, or a fresh one."""
    if config.init is not None:
        adapter = load_adapter(config.init, expected_backbone=spec)
        if adapter.kind != config.kind:
            raise InvalidInput(f"--init holds a {adapter.kind} adapter but --kind is {config.kind}")
    else:
        impl = get_kind(config.kind)
        hyper: dict = {"r": config.rank, "alpha": float(config.alpha or 2 * config.rank)}
        if config.kind == "glora":
            hyper["gate"] = config.gate
        if config.kind == "saml":
            hyper.update(experts=config.experts, top_k=config.top_k, router_dim=spec.router_dim or 0)
        targets = resolve_targets(config.targets, spec.linear_shapes)
        adapter = new_adapter(config.kind, impl.make_config(**hyper), targets, spec, seed=config.seed)
    adapter.created_at = _creation_time(config)
    adapter.creator = CREATOR
    return adapter


def resolve_stage(config: TrainConfig, kind: str) -> str:
    """The kind's training stage: explicit, or the natural one (``adapt`` when starting from a file)."""
    stages = get_kind(kind).stages
    stage = config.stage
    if stage is None:
        stage = "adapt" if config.init is not None and "adapt" in stages else next(iter(stages))
    if stage == "adapt" and config.adapt_experts:
        stage = "adapt_full"
    if stage not in stages:
        raise InvalidInput(f"kind {kind!r} has no training stage {stage!r}; stages: {', '.join(stages)}")
    return stage


def metric_name(langs: Sequence[str]) -> str:
    """The dev metric: WER for English, MER (Hangul syllables + whole words) otherwise."""
    return "wer" if set(langs) <= {"en"} else "mer"


def score(refs: Sequence[str], hyps: Sequence[str], langs: Sequence[str]) -> tuple[str, float]:
    """(metric, value): WER after Whisper's English normalizer for English, else MER (as ``splitasr eval``)."""
    from ..scoring import mer, wer

    if metric_name(langs) == "wer":
        from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

        norm = EnglishTextNormalizer({})
        return "wer", wer([norm(r) for r in refs], [norm(h) for h in hyps])
    return "mer", mer(list(refs), list(hyps))


def decode(backbone: WhisperBackbone, examples: Examples, slot: int, batch_size: int) -> list[str]:
    """Greedy transcripts of ``examples`` with adapter ``slot`` (0 = backbone only)."""
    hyps: list[str] = []
    for start in range(0, len(examples), batch_size):
        audios = examples.audios[start : start + batch_size]
        langs = set(examples.langs[start : start + batch_size])
        language = next(iter(langs)) if backbone.multilingual and len(langs) == 1 else None
        # A hallucination loop would run to the decoder's limit (448 tokens) and dominate the cost of
        # an epoch; twice the reference length scores almost the same (extra words are all errors).
        longest = max(len(ids) for ids, _ in examples.sequences[start : start + batch_size])
        # as trained: no timestamps; plain greedy decoding (no temperature fallback) keeps epochs comparable
        options = DecodingOptions(language=language, max_new_tokens=2 * longest + 8, without_timestamps=True,
                                  compression_ratio_threshold=None, logprob_threshold=None,
                                  no_speech_threshold=None)
        slots = [slot] * len(audios) if slot else None
        hyps += [t.text for t in transcribe(backbone, audios, options, slots)]
    return hyps


def batch_loss(model: torch.nn.Module, examples: Examples, index: torch.Tensor, pad_id: int,
               reduction: str = "mean") -> tuple[torch.Tensor, int]:
    """Teacher-forced cross-entropy of rows ``index`` with slot 1 (and the number of scored tokens)."""
    ids, labels = pad_labels([examples.sequences[i] for i in index.tolist()], pad_id)
    device = examples.features.device
    ids, labels = ids.to(device), labels.to(device)
    with bank_context(model, slots=[SLOT] * len(index), utterance_embedding=examples.embeddings[index]):
        encoded = encoder_output(model, examples, index)
        out = model(encoder_outputs=(encoded,), decoder_input_ids=ids, use_cache=False)
    loss = F.cross_entropy(out.logits.float().flatten(0, 1), labels.flatten(), reduction=reduction)
    return loss, int((labels != -100).sum())


def accumulate(model: torch.nn.Module, examples: Examples, index: torch.Tensor, pad_id: int,
               micro_batch_size: int | None) -> float:
    """Backward of the mean token loss of rows ``index``; returns that loss.

    With ``micro_batch_size``, the rows go through in parts whose summed losses are divided by the
    batch's token count before backward: the gradient is the whole batch's, the activations held at
    once are a part's.
    """
    if micro_batch_size is None or micro_batch_size >= len(index):
        loss, _ = batch_loss(model, examples, index, pad_id)
        loss.backward()
        return loss.item()
    tokens = sum(len(ids) - prefix for ids, prefix in (examples.sequences[i] for i in index.tolist()))
    total = 0.0
    for part in index.split(micro_batch_size):
        loss, _ = batch_loss(model, examples, part, pad_id, reduction="sum")
        (loss / tokens).backward()
        total += loss.item()
    return total / tokens


def dev_loss(model: torch.nn.Module, examples: Examples, pad_id: int, batch_size: int) -> float:
    total, tokens = 0.0, 0
    with torch.no_grad():
        for index in torch.arange(len(examples)).split(batch_size):
            loss, n = batch_loss(model, examples, index, pad_id, reduction="sum")
            total, tokens = total + float(loss), tokens + n
    return total / max(tokens, 1)


def _schedule(optimizer: torch.optim.Optimizer, total: int, warmup: float) -> torch.optim.lr_scheduler.LambdaLR:
    warm = max(1, round(warmup * total))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class _Reporter:
    """Progress bar and epoch lines on stderr, silent when quiet or not a terminal (bar only)."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.quiet = quiet
        self.bar = tqdm(total=total, unit="step", disable=quiet or not sys.stderr.isatty(), leave=False,
                        dynamic_ncols=True)

    def step(self, loss: float) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.3f}")

    def say(self, text: str) -> None:
        if not self.quiet:
            self.bar.write(text, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


def train_adapter(
    backbone: WhisperBackbone,
    train_utts: Sequence[Utterance],
    dev_utts: Sequence[Utterance],
    config: TrainConfig,
    on_progress: ProgressCallback | None = None,
) -> TrainResult:
    """Train an adapter for ``backbone`` on ``train_utts``, early-stopping on ``dev_utts`` (may be empty).

    The backbone is left as it was (its bank is detached at the end, also on errors). ``on_progress``
    hears about each step and epoch (see :data:`ProgressCallback`).
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    model = backbone.model
    if hasattr(model, STATE_MODULE_NAME):
        raise InvalidInput("the backbone already has an adapter bank; train on a plain backbone")
    torch.manual_seed(config.seed)
    spec = BackboneSpec.from_model(backbone.name, model)
    adapter = initial_adapter(config, spec)
    stage = resolve_stage(config, adapter.kind)
    train = prepare(backbone, train_utts, casing=config.casing, targets=adapter.targets, batch_size=config.batch_size)
    dev = (prepare(backbone, dev_utts, casing=config.casing, targets=adapter.targets, batch_size=config.batch_size)
           if dev_utts else None)
    prepare_seconds = time.perf_counter() - start
    if on_progress is not None:
        on_progress("prepared", {"train_utterances": len(train), "dev_utterances": len(dev) if dev else 0,
                                 "dev_metric": metric_name(dev.langs) if dev else None, "epochs": config.epochs,
                                 "steps": math.ceil(len(train) / config.batch_size) * config.epochs})
    limits = AdapterLimits(max_rank=adapter.config.r, max_experts=adapter.config.num_experts)
    attach_bank(model, adapter.targets, num_slots=1, limits=limits, kinds=[adapter.kind])
    try:
        load_into_slot(model, SLOT, adapter)
        params = set_trainable(model, stage_families(adapter.kind, stage))
        result = _fit(backbone, train, dev, params, config, on_progress or _silent)
        trained = _export(model, adapter)
    finally:
        detach_bank(model)
        model.requires_grad_(False)
    history, step_losses, best_epoch = result
    before = history[0].dev_error
    after = history[best_epoch].dev_error
    return TrainResult(
        adapter=trained,
        stage=stage,
        # the bank holds slot 0 (always zero) and slot 1, each sized exactly for this adapter
        trainable_parameters=sum(p.numel() for p in params) // 2,
        adapter_parameters=trained.num_parameters(),
        train_utterances=len(train),
        train_audio_seconds=float(train.frames.sum()) / 100.0,  # 10 ms mel frames
        dev_utterances=len(dev) if dev else 0,
        dev_metric=None if dev is None else metric_name(dev.langs),
        dev_before=before,
        dev_after=after,
        best_epoch=best_epoch,
        epochs_run=len(history) - 1,
        steps=len(step_losses),
        encoder_layers_cached=train.start_layer if train.hidden is not None else 0,
        wall_seconds=time.perf_counter() - start,
        cpu_seconds=time.process_time() - cpu_start,
        prepare_seconds=prepare_seconds,
        step_losses=step_losses,
        history=history,
    )


def _silent(event: str, fields: dict) -> None:
    pass


def _export(model: torch.nn.Module, template: Adapter) -> Adapter:
    trained = export_slot(model, SLOT)
    trained.created_at, trained.creator = template.created_at, template.creator
    return trained


def _fit(
    backbone: WhisperBackbone,
    train: Examples,
    dev: Examples | None,
    params: list[torch.nn.Parameter],
    config: TrainConfig,
    on_progress: ProgressCallback,
) -> tuple[list[EpochLog], list[float], int]:
    """The epoch loop; leaves the best epoch's weights in the bank. Returns (history, step losses, best)."""
    model = backbone.model
    pad_id = backbone.model.generation_config.eos_token_id
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = _schedule(optimizer, steps_per_epoch * config.epochs, config.warmup)
    generator = torch.Generator().manual_seed(config.seed)
    reporter = _Reporter(steps_per_epoch * config.epochs, config.quiet)

    def evaluate(epoch: int, train_loss: float | None, began: float) -> EpochLog:
        if dev is None:
            return EpochLog(epoch, train_loss, None, None, time.perf_counter() - began)
        loss = dev_loss(model, dev, pad_id, config.batch_size)
        error = score(dev.texts, decode(backbone, dev, SLOT, config.batch_size), dev.langs)[1]
        return EpochLog(epoch, train_loss, loss, error, time.perf_counter() - began)

    steps = steps_per_epoch * config.epochs
    history = [evaluate(0, None, time.perf_counter())]
    best, best_key, best_state = 0, _key(history[0]), _snapshot(params)
    reporter.say(_line(history[0]))
    on_progress("epoch", asdict(history[0]))
    step_losses: list[float] = []
    try:
        for epoch in range(1, config.epochs + 1):
            began = time.perf_counter()
            epoch_losses = []
            for index in batch_order(len(train), config.batch_size, generator):
                optimizer.zero_grad(set_to_none=True)
                loss = accumulate(model, train, index, pad_id, config.micro_batch_size)
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                epoch_losses.append(loss)
                reporter.step(epoch_losses[-1])
                on_progress("step", {"epoch": epoch, "step": len(step_losses) + len(epoch_losses), "steps": steps,
                                     "loss": epoch_losses[-1]})
            step_losses += epoch_losses
            history.append(evaluate(epoch, sum(epoch_losses) / len(epoch_losses), began))
            reporter.say(_line(history[-1]))
            on_progress("epoch", asdict(history[-1]))
            if dev is None or _key(history[-1]) < best_key:
                best, best_key, best_state = epoch, _key(history[-1]), _snapshot(params)
            elif config.patience > 0 and epoch - best >= config.patience:
                reporter.say(f"early stop: no dev improvement for {config.patience} epoch(s); keeping epoch {best}")
                break
    finally:
        reporter.close()
    with torch.no_grad():
        for param, saved in zip(params, best_state):
            param.copy_(saved)
    return history, step_losses, best


def _key(entry: EpochLog) -> tuple[float, float]:
    return (entry.dev_error if entry.dev_error is not None else 0.0, entry.dev_loss or 0.0)


def _snapshot(params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _line(entry: EpochLog) -> str:
    parts = [f"epoch {entry.epoch:>3}"]
    if entry.train_loss is not None:
        parts.append(f"train loss {entry.train_loss:.4f}")
    if entry.dev_loss is not None:
        parts.append(f"dev loss {entry.dev_loss:.4f}  dev error {entry.dev_error:.4f}")
    parts.append(f"{entry.seconds:.1f} s")
    return "  ".join(parts)
