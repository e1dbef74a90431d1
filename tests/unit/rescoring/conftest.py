"""A tiny random BERT with the real MiniLM tokenizer: fast rescorer tests with real tokenization."""

from __future__ import annotations

import functools

import torch

from splitasr.adapters import BackboneSpec, KindConfig, new_adapter
from splitasr.rescoring.encoder import TextEncoder, encoder_dir
from splitasr.rescoring.model import Rescorer


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(encoder_dir("minilm"))


def tiny_encoder(seed: int = 0) -> TextEncoder:
    """A fresh 2-layer, hidden-32 BertModel (random weights) for each test: banks attach in place."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128)
    model = BertModel(config, add_pooling_layer=False).eval()
    model.requires_grad_(False)
    return TextEncoder("tiny-bert", model, _tokenizer(), BackboneSpec.from_model("tiny-bert", model))


def random_rescorer(encoder: TextEncoder, targets: list[str], seed: int, rank: int = 4) -> Rescorer:
    """A rescorer with non-zero LoRA B and head, so every part of the score matters."""
    lora = new_adapter("lora", KindConfig(r=rank, alpha=2.0 * rank), targets, encoder.spec, seed=seed)
    g = torch.Generator().manual_seed(seed)
    for tensors in lora.tensors.values():
        tensors["lora_B"] = torch.randn(tensors["lora_B"].shape, generator=g) * 0.2
    hidden = encoder.hidden_size
    return Rescorer(lora, torch.randn(hidden, generator=g), torch.randn(1, generator=g))
