"""The frozen Whisper backbone: model, tokenizer and feature extractor, loaded once."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import (
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperTokenizer,
)
from transformers import logging as transformers_logging

from ..audio import SAMPLE_RATE_HZ
from ..errors import BackboneUnavailable
from .linear import use_onednn_linears
from .quantize import check_quantization, quantize_model
from .sources import ResolvedBackbone, resolve_backbone

log = logging.getLogger(__name__)
# Whisper's own generate() passes its suppress lists explicitly and transformers warns about that on
# every call; the warnings carry nothing for our users.
transformers_logging.set_verbosity_error()

WINDOW_SECONDS = 30.0
WINDOW_FRAMES = 3000  # the encoder's fixed input: 30 s of 10 ms mel frames


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackboneUnavailable(f"device {requested!r} requested but CUDA is not available")
    return device


@dataclass
class WhisperBackbone:
    """A loaded, frozen Whisper model with its tokenizer and feature extractor."""

    name: str
    model: WhisperForConditionalGeneration
    tokenizer: WhisperTokenizer
    feature_extractor: WhisperFeatureExtractor
    load_seconds: float = 0.0
    languages: tuple[str, ...] = field(default_factory=tuple)
    quantization: str = "none"  # none | int8 | nf4 (linear layers only)

    @classmethod
    def load(
        cls,
        spec: str,
        *,
        cache_dir: Path,
        device: str = "auto",
        dtype: torch.dtype | None = None,
        quantize: str = "none",
    ) -> WhisperBackbone:
        """Resolve ``spec`` (name, directory or hub id), load it frozen in eval mode.

        ``quantize``: ``none``, ``int8`` or ``nf4`` weights for the linear layers (see
        :mod:`splitasr.backbones.quantize`).
        """
        return cls.from_resolved(resolve_backbone(spec, cache_dir), device=device, dtype=dtype, quantize=quantize)

    @classmethod
    def from_resolved(
        cls,
        resolved: ResolvedBackbone,
        *,
        device: str = "auto",
        dtype: torch.dtype | None = None,
        quantize: str = "none",
    ) -> WhisperBackbone:
        """Load an already resolved location (see :meth:`load`)."""
        start = time.perf_counter()
        check_quantization(quantize)
        dev = pick_device(device)
        dtype = dtype or (torch.float16 if dev.type == "cuda" else torch.float32)
        try:
            model = WhisperForConditionalGeneration.from_pretrained(resolved.location, dtype=dtype)
            tokenizer = WhisperTokenizer.from_pretrained(resolved.location)
            feature_extractor = WhisperFeatureExtractor.from_pretrained(resolved.location)
        except OSError as exc:
            hint = "" if resolved.is_local else " (a hub id needs network access; use a local directory offline)"
            raise BackboneUnavailable(f"cannot load backbone {resolved.name!r}: {exc}{hint}") from exc
        model.to(dev).eval().requires_grad_(False)
        quantize_model(model, quantize)
        use_onednn_linears(model)  # after quantization, which picks plain nn.Linear layers
        gen = model.generation_config
        languages = tuple(k.strip("<|>") for k in (getattr(gen, "lang_to_id", None) or {}))
        backbone = cls(resolved.name, model, tokenizer, feature_extractor, languages=languages,
                       quantization=quantize)
        backbone.load_seconds = time.perf_counter() - start
        log.info(
            "backbone %s loaded on %s (%s, quantization %s) in %.2f s",
            resolved.name, dev, str(dtype).removeprefix("torch."), quantize, backbone.load_seconds,
        )
        return backbone

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def multilingual(self) -> bool:
        return bool(getattr(self.model.generation_config, "is_multilingual", False))

    def features(self, audios: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-mel features for a batch; padded to at least 30 s, longer audio kept whole (long-form)."""
        longest = max(len(a) for a in audios)
        window = int(WINDOW_SECONDS * SAMPLE_RATE_HZ)
        out = self.feature_extractor(
            audios,
            sampling_rate=SAMPLE_RATE_HZ,
            return_tensors="pt",
            return_attention_mask=True,
            truncation=False,
            padding="max_length" if longest <= window else "longest",
            max_length=window if longest <= window else None,
        )
        feats = out.input_features
        mask = out.attention_mask
        if feats.shape[-1] < WINDOW_FRAMES:  # "longest" padding can stop just short of one window
            pad = WINDOW_FRAMES - feats.shape[-1]
            feats = torch.nn.functional.pad(feats, (0, pad))
            mask = torch.nn.functional.pad(mask, (0, pad))
        return feats.to(self.device, self.dtype), mask.to(self.device)
