"""Whisper's special tokens and decoding rules for one backbone, derived once from its configs.

The suppress lists, the maximum initial timestamp and the alignment heads come from the model's
generation config (for converted CTranslate2 packages, from their ``config.json``); the ids of the
special tokens from the tokenizer. Everything a decode step needs is precomputed here as tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

TIME_PRECISION_S = 0.02  # one timestamp token step
FRAME_S = 0.01  # one mel frame
INPUT_STRIDE = 2  # mel frames per encoder position


@dataclass(frozen=True)
class Vocab:
    vocab_size: int
    eot: int
    sot: int
    sot_prev: int
    no_timestamps: int
    no_speech: int
    timestamp_begin: int
    transcribe: int
    translate: int
    suppress: tuple[int, ...]  # never sampled
    begin_suppress: tuple[int, ...]  # not sampled as the first token (blank, end of text)
    max_initial_timestamp: int | None  # index of the last timestamp allowed first
    alignment_heads: tuple[tuple[int, int], ...]  # (decoder layer, head) pairs for word times
    languages: dict[str, int]  # code -> language token id (multilingual backbones)
    text_ctx: int  # decoder positions (448)
    audio_ctx: int  # encoder positions (1500)
    device: torch.device

    @classmethod
    def from_backbone(cls, backbone) -> Vocab:
        model, tok = backbone.model, backbone.tokenizer
        gen, config = model.generation_config, model.config
        ids = tok.convert_tokens_to_ids
        no_ts = int(gen.no_timestamps_token_id)
        special = {ids(t) for t in ("<|startoftranscript|>", "<|startofprev|>", "<|startoflm|>",
                                    "<|transcribe|>", "<|translate|>")}
        # suppressed as openai/whisper does for suppress_tokens="-1": the model's list plus the task
        # and context tokens, which a transcript never contains
        suppress = sorted(set(gen.suppress_tokens or []) | special)
        languages = {k.strip("<|>"): int(v) for k, v in (getattr(gen, "lang_to_id", None) or {}).items()}
        heads = getattr(gen, "alignment_heads", None) or []
        return cls(
            vocab_size=int(config.vocab_size),
            eot=int(gen.eos_token_id),
            sot=int(gen.decoder_start_token_id),
            sot_prev=int(getattr(gen, "prev_sot_token_id", None) or ids("<|startofprev|>")),
            no_timestamps=no_ts,
            no_speech=no_ts - 1,
            timestamp_begin=no_ts + 1,
            transcribe=ids("<|transcribe|>"),
            translate=ids("<|translate|>"),
            suppress=tuple(int(t) for t in suppress),
            begin_suppress=tuple(int(t) for t in (gen.begin_suppress_tokens or [])),
            max_initial_timestamp=getattr(gen, "max_initial_timestamp_index", None),
            alignment_heads=tuple((int(layer), int(head)) for layer, head in heads),
            languages=languages,
            text_ctx=int(config.max_target_positions),
            audio_ctx=int(config.max_source_positions),
            device=backbone.device,
        )

    @property
    def multilingual(self) -> bool:
        return bool(self.languages)

    def sot_sequence(self, language: str | None, task: str) -> list[int]:
        """[sot, (<|lang|>, <|task|>)] for this backbone."""
        if not self.multilingual:
            return [self.sot]
        return [self.sot, self.languages[language or "en"], self.translate if task == "translate" else self.transcribe]

    @cached_property
    def suppress_ids(self) -> torch.Tensor:
        return torch.tensor(self.suppress, dtype=torch.long, device=self.device)

    @cached_property
    def begin_suppress_ids(self) -> torch.Tensor:
        return torch.tensor(self.begin_suppress, dtype=torch.long, device=self.device)

    @cached_property
    def vocab_ids(self) -> torch.Tensor:
        return torch.arange(self.vocab_size, device=self.device)

    @cached_property
    def language_ids(self) -> torch.Tensor:
        return torch.tensor(sorted(self.languages.values()), dtype=torch.long, device=self.device)

    @cached_property
    def language_of_id(self) -> dict[int, str]:
        return {v: k for k, v in self.languages.items()}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level BPE alphabet (which Whisper's tokenizer uses): byte -> printable character."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))
