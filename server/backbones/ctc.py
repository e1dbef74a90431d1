"""Encoder-only CTC backbones (Conformer / FastConformer) from transformers, and greedy CTC decoding.

Any ``AutoModelForCTC`` checkpoint with a feature extractor and a tokenizer loads: a local directory or a
hub id, e.g. ``facebook/wav2vec2-conformer-rel-pos-large-960h-ft`` (``Wav2Vec2ConformerForCTC``) or
``nvidia/parakeet-ctc-0.6b`` (``ParakeetForCTC``, FastConformer). The model runs frozen in eval mode;
adapters attach to its linear layers exactly as on Whisper (see :mod:`splitasr.adapters.targets` for
the presets that cover both families).

SAML router input: CTC models have no common log-mel front end (wav2vec2 reads the waveform), so the
router gets the same utterance statistics as on Whisper, computed from an 80-bin Whisper log-mel next
to the model's own input: the backbone reports ``num_mel_bins = 80`` for that purpose.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModelForCTC,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    Wav2Vec2CTCTokenizer,
    WhisperFeatureExtractor,
)

from ..adapters.context import bank_context
from ..adapters.saml import utterance_embedding
from ..audio import SAMPLE_RATE_HZ
from ..errors import BackboneUnavailable
from .linear import use_onednn_linears
from .quantize import check_quantization, quantize_model
from .sources import ResolvedBackbone
from .whisper import pick_device

log = logging.getLogger(__name__)

ROUTER_MEL_BINS = 80
CHUNK_SECONDS = 30.0  # longer audio is decoded in 30 s pieces: attention cost grows with the square of length
CTC_MODEL_TYPES = ("wav2vec2-conformer", "wav2vec2", "parakeet_ctc", "hubert", "wavlm", "data2vec-audio")


def greedy_ctc(logits: torch.Tensor, lengths: Sequence[int], blank: int) -> list[list[tuple[int, int]]]:
    """Best-path CTC decoding: per frame argmax, merge repeats, drop blanks.

    ``logits`` [B, T, V]; ``lengths`` valid frames per row. Returns per row the kept (token, frame) pairs,
    the frame being where the token first appears (for timestamps).
    """
    best = logits.argmax(-1).tolist()
    out: list[list[tuple[int, int]]] = []
    for row, length in zip(best, lengths):
        kept, previous = [], None
        for frame, token in enumerate(row[: int(length)]):
            if token != previous and token != blank:
                kept.append((token, frame))
            previous = token
        out.append(kept)
    return out


def is_ctc_location(location: str) -> bool:
    """Whether a transformers directory or hub id holds a CTC model (rather than Whisper)."""
    path = Path(location) / "config.json"
    if path.is_file():
        config = json.loads(path.read_text())
        model_type, archs = config.get("model_type", ""), config.get("architectures") or []
    else:
        try:
            config = AutoConfig.from_pretrained(location)
        except OSError:
            return False  # let the Whisper loader report the problem
        model_type, archs = config.model_type, config.architectures or []
    return model_type in CTC_MODEL_TYPES or any(a.endswith("ForCTC") for a in archs)


@dataclass
class CTCBackbone:
    """A loaded, frozen CTC model with its feature extractor and tokenizer."""

    name: str
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    feature_extractor: object
    load_seconds: float = 0.0
    quantization: str = "none"
    languages: tuple[str, ...] = field(default_factory=tuple)
    multilingual: ClassVar[bool] = False
    router_features: WhisperFeatureExtractor = field(
        default_factory=lambda: WhisperFeatureExtractor(feature_size=ROUTER_MEL_BINS))

    @classmethod
    def load(cls, resolved: ResolvedBackbone, *, device: str = "auto", dtype: torch.dtype | None = None,
             quantize: str = "none") -> CTCBackbone:
        """Load the CTC model at ``resolved.location`` frozen in eval mode (optionally quantized)."""
        start = time.perf_counter()
        check_quantization(quantize)
        dev = pick_device(device)
        dtype = dtype or (torch.float16 if dev.type == "cuda" else torch.float32)
        try:
            model = AutoModelForCTC.from_pretrained(resolved.location, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(resolved.location)
            feature_extractor = AutoFeatureExtractor.from_pretrained(resolved.location)
        except OSError as exc:
            hint = "" if resolved.is_local else " (a hub id needs network access; use a local directory offline)"
            raise BackboneUnavailable(f"cannot load CTC backbone {resolved.name!r}: {exc}{hint}") from exc
        if model.config.pad_token_id is None:
            raise BackboneUnavailable(f"CTC backbone {resolved.name!r} has no pad_token_id (the CTC blank)")
        if getattr(model.config, "num_mel_bins", None) is None:
            model.config.num_mel_bins = ROUTER_MEL_BINS  # the SAML router input size (see module docstring)
        model.to(dev).eval().requires_grad_(False)
        quantize_model(model, quantize)
        use_onednn_linears(model)  # after quantization, which picks plain nn.Linear layers
        backbone = cls(resolved.name, model, tokenizer, feature_extractor, quantization=quantize)
        backbone.load_seconds = time.perf_counter() - start
        log.info("CTC backbone %s (%s) loaded on %s in %.2f s", resolved.name, type(model).__name__, dev,
                 backbone.load_seconds)
        return backbone

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def blank_id(self) -> int:
        return int(self.model.config.pad_token_id)

    def inputs(self, audios: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        """The model's padded inputs (``input_values`` or ``input_features``) and ``attention_mask``."""
        out = self.feature_extractor(list(audios), sampling_rate=SAMPLE_RATE_HZ, return_tensors="pt",
                                     padding=True, return_attention_mask=True)
        inputs = {k: v.to(self.device) for k, v in out.items() if k in ("input_values", "input_features",
                                                                         "attention_mask")}
        for key in ("input_values", "input_features"):
            if key in inputs:
                inputs[key] = inputs[key].to(self.dtype)
        return inputs

    def output_lengths(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """Valid logit frames per row for an input attention mask."""
        lengths = attention_mask.sum(-1)
        for method in ("_get_feat_extract_output_lengths", "_get_subsampling_output_length"):
            fn = getattr(self.model, method, None) or getattr(getattr(self.model, "encoder", None), method, None)
            if fn is not None:
                return fn(lengths).long()
        raise BackboneUnavailable(f"cannot tell the output length of {type(self.model).__name__}")

    def router_embedding(self, audios: Sequence[np.ndarray]) -> torch.Tensor:
        """SAML router input [B, 160]: mean and std over time of an 80-bin log-mel of each utterance."""
        out = self.router_features(list(audios), sampling_rate=SAMPLE_RATE_HZ, return_tensors="pt",
                                   padding="longest", return_attention_mask=True)
        return utterance_embedding(out.input_features, out.attention_mask.sum(-1)).to(self.device)

    def text(self, tokens: Sequence[int]) -> str:
        """Text of already collapsed CTC tokens."""
        if isinstance(self.tokenizer, Wav2Vec2CTCTokenizer):  # its decode would merge repeats again
            return self.tokenizer.decode(list(tokens), group_tokens=False, skip_special_tokens=True).strip()
        return self.tokenizer.decode(list(tokens), skip_special_tokens=True).strip()

    def labels(self, texts: Sequence[str]) -> torch.Tensor:
        """Padded CTC targets [B, L] (-100 = padding) for training."""
        if isinstance(self.tokenizer, Wav2Vec2CTCTokenizer) and not self.tokenizer.do_lower_case:
            vocab = self.tokenizer.get_vocab()
            if not any(k.islower() for k in vocab) and any(k.isupper() for k in vocab):
                texts = [t.upper() for t in texts]  # upper-case character vocabularies (wav2vec2 960h)
        ids = [self.tokenizer(t, add_special_tokens=False).input_ids for t in texts]
        longest = max(1, max(len(i) for i in ids))
        labels = torch.full((len(ids), longest), -100, dtype=torch.long)
        for row, seq in enumerate(ids):
            labels[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return labels.to(self.device)


def ctc_loss(backbone: CTCBackbone, audios: Sequence[np.ndarray], texts: Sequence[str], slot: int = 0) -> torch.Tensor:
    """The model's CTC loss for reference ``texts`` with adapter ``slot`` active (0 = none), for training."""
    inputs = backbone.inputs(audios)
    labels = backbone.labels(texts)
    if not slot:
        return backbone.model(**inputs, labels=labels).loss
    embedding = backbone.router_embedding(audios)
    with bank_context(backbone.model, slots=[slot] * len(audios), utterance_embedding=embedding):
        return backbone.model(**inputs, labels=labels).loss


def write_random_ctc_model(out_dir: Path, *, seed: int = 0, hidden_size: int = 32, layers: int = 2) -> Path:
    """A small randomly initialised ``Wav2Vec2ConformerForCTC`` directory with a character vocabulary.

    No pretrained Conformer ships offline; this is what the tests (and ``splitasr models random-ctc``)
    use to exercise the CTC path end to end. Its transcripts are noise.
    """
    from transformers import Wav2Vec2ConformerConfig, Wav2Vec2ConformerForCTC, Wav2Vec2FeatureExtractor

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    symbols = ["<pad>", "<s>", "</s>", "<unk>", "|", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ'"]
    (out_dir / "vocab.json").write_text(json.dumps({s: i for i, s in enumerate(symbols)}))
    tokenizer = Wav2Vec2CTCTokenizer(str(out_dir / "vocab.json"), word_delimiter_token="|")
    config = Wav2Vec2ConformerConfig(
        vocab_size=len(symbols), hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=2 * hidden_size, conv_dim=(hidden_size,) * 3, conv_stride=(5, 8, 4),
        conv_kernel=(10, 8, 4), conv_depthwise_kernel_size=7, position_embeddings_type="relative",
        feat_extract_norm="layer", do_stable_layer_norm=True, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        ctc_loss_reduction="mean", ctc_zero_infinity=True, architectures=["Wav2Vec2ConformerForCTC"],
    )
    torch.manual_seed(seed)
    Wav2Vec2ConformerForCTC(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE_HZ, do_normalize=True,
                             return_attention_mask=True).save_pretrained(out_dir)
    return out_dir
