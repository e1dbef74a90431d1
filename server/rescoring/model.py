"""LoRB: a frozen BERT-style encoder with LoRA on its linears and a scoring head on the pooled output.

The LoRA part is an ordinary SplitASR ``lora`` adapter whose "backbone" is the text encoder: it lives
in an :class:`~splitasr.adapters.AdapterBank` attached to the encoder's linears, so one forward pass
scores hypotheses of many requests, each row with its own rescorer (slot 0 = no LoRA), and training
uses the same layers with one slot. The head is a linear map per slot: score = w · pool(h) + b.

Score fusion (pure, :func:`fuse`): final = ASR log-probability + λ · rescorer score + β · (tokens + 1),
λ and β tuned on dev data and stored in the rescorer file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..adapters import Adapter, AdapterLimits, attach_bank, bank_context, load_into_slot, resolve_targets
from ..errors import InvalidInput
from .encoder import TextEncoder

if TYPE_CHECKING:
    from .data import NBestList

# LoRA target presets on BERT module names (``*`` = every layer)
TARGET_PRESETS: dict[str, tuple[str, ...]] = {
    "attn": (
        "encoder.layer.*.attention.self.query",
        "encoder.layer.*.attention.self.key",
        "encoder.layer.*.attention.self.value",
        "encoder.layer.*.attention.output.dense",
    ),
    "ffn": ("encoder.layer.*.intermediate.dense", "encoder.layer.*.output.dense"),
    "qv": ("encoder.layer.*.attention.self.query", "encoder.layer.*.attention.self.value"),
}
DEFAULT_TARGETS = "attn,ffn"
POOLINGS = ("mean", "cls")


def encoder_targets(encoder: TextEncoder, spec: str) -> list[str]:
    """Module names of the encoder's linears selected by presets (attn, ffn, qv) and/or globs."""
    globs = [g for item in spec.split(",") if item.strip() for g in TARGET_PRESETS.get(item.strip(), (item.strip(),))]
    return resolve_targets(globs, encoder.spec.linear_shapes)


@dataclass(frozen=True)
class Fusion:
    """final score = asr_logprob + weight · rescorer_score + length_weight · (tokens + 1)."""

    weight: float = 1.0  # λ
    length_weight: float = 0.0  # β, per ASR token (end of text included)

    def to_dict(self) -> dict[str, float]:
        return {"weight": self.weight, "length_weight": self.length_weight}


def fuse(asr_logprobs: torch.Tensor, rescorer_scores: torch.Tensor, lengths: torch.Tensor, fusion: Fusion) -> torch.Tensor:
    """Combined hypothesis scores (any matching shapes)."""
    return asr_logprobs + fusion.weight * rescorer_scores + fusion.length_weight * lengths


def choose(x: NBestList, scores: Sequence[float], fusion: Fusion) -> int:
    """Index of the hypothesis with the best fused score (the first of equals: the beam's own order)."""
    fused = fuse(torch.tensor(x.asr), torch.tensor(scores), torch.tensor(x.lengths, dtype=torch.float), fusion)
    return int(fused.argmax())


@dataclass
class Rescorer:
    """One rescorer: its LoRA adapter on the encoder, its head, pooling and fusion weights."""

    lora: Adapter
    head_weight: torch.Tensor  # [hidden]
    head_bias: torch.Tensor  # [1]
    pooling: str = "mean"
    fusion: Fusion = field(default_factory=Fusion)
    asr_backbone: str = ""  # the ASR backbone whose N-best lists it was trained on (informational)
    training: dict = field(default_factory=dict)  # summary of how it was trained (informational)

    @property
    def encoder_name(self) -> str:
        return self.lora.backbone_name

    def num_parameters(self) -> int:
        return self.lora.num_parameters() + self.head_weight.numel() + self.head_bias.numel()


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: Sequence[str]) -> torch.Tensor:
    """Pooled [N, H] from hidden [N, T, H]: per row ``mean`` over real tokens or the [CLS] vector."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
    if all(h == "mean" for h in how):
        return mean
    use_cls = torch.tensor([h == "cls" for h in how], device=hidden.device).unsqueeze(-1)
    return torch.where(use_cls, hidden[:, 0], mean)


class ScoringModel(nn.Module):
    """The encoder with ``num_slots`` rescorer slots (LoRA bank + per-slot heads)."""

    def __init__(self, encoder: TextEncoder, targets: Sequence[str], num_slots: int, max_rank: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.bert = encoder.model  # registered, so parameters() and to() see the encoder
        attach_bank(encoder.model, list(targets), num_slots, AdapterLimits(max_rank=max_rank), kinds=["lora"])
        self.targets = set(targets)
        hidden = encoder.hidden_size
        self.head_weight = nn.Parameter(torch.zeros(num_slots + 1, hidden, device=encoder.device), requires_grad=False)
        self.head_bias = nn.Parameter(torch.zeros(num_slots + 1, device=encoder.device), requires_grad=False)
        self.poolings = ["mean"] * (num_slots + 1)
        self.num_slots = num_slots

    def load(self, slot: int, rescorer: Rescorer) -> None:
        """Put ``rescorer`` in ``slot`` (its LoRA into the bank, its head into the head table)."""
        if rescorer.lora.backbone_fingerprint != self.encoder.spec.fingerprint:
            raise InvalidInput(
                f"rescorer was trained for text encoder {rescorer.encoder_name!r} with another fingerprint; "
                f"this server runs {self.encoder.name!r}"
            )
        missing = sorted(set(rescorer.lora.targets) - self.targets)
        if missing:
            raise InvalidInput(f"rescorer adapts {len(missing)} encoder layer(s) this model has no slots for")
        load_into_slot(self.encoder.model, slot, rescorer.lora)
        with torch.no_grad():
            self.head_weight[slot].copy_(rescorer.head_weight)
            self.head_bias[slot].copy_(rescorer.head_bias.reshape(()))
        self.poolings[slot] = rescorer.pooling

    def forward(self, texts: Sequence[str], slots: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [N], pooled [N, H]) of ``texts``, row i scored by the rescorer in ``slots[i]``."""
        if len(texts) != len(slots):
            raise ValueError(f"{len(texts)} texts but {len(slots)} slots")
        batch = self.encoder.tokenize(list(texts))
        index = torch.tensor(list(slots), dtype=torch.long, device=self.head_weight.device)
        with bank_context(self.encoder.model, slots=list(slots)):
            hidden = self.encoder.model(**batch).last_hidden_state
        pooled = pool(hidden, batch["attention_mask"], [self.poolings[s] for s in slots])
        scores = (pooled * self.head_weight[index]).sum(-1) + self.head_bias[index]
        return scores, pooled
