"""Training examples for adapters: target text, Whisper token labels and precomputed features.

The backbone is frozen, so everything that does not depend on the adapter is computed once per run:
log-mel features, the SAML router input (:func:`~splitasr.adapters.utterance_embedding`) and the
encoder's hidden state up to the first encoder layer the adapter touches (the whole encoder when it
only touches the decoder). A training step then runs only what the adapter changes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..adapters import utterance_embedding
from ..audio import SAMPLE_RATE_HZ, decode_audio
from ..backbones.whisper import WINDOW_FRAMES, WINDOW_SECONDS, WhisperBackbone
from ..datasets.manifest import Utterance
from ..errors import InvalidInput

log = logging.getLogger(__name__)

CASINGS = ("restore", "keep")
IGNORE_INDEX = -100  # labels the loss skips (prefix predictions and padding)
_PUNCT = re.compile(r"[.,!?;:\"()]")
_PRONOUN_I = re.compile(r"\bi(?=\b|'(?:m|ll|d|ve)\b)")
_ENCODER_LAYER = re.compile(r"^model\.encoder\.layers\.(\d+)\.")
MAX_CACHE_BYTES = 4 << 30  # above this, encoder states are recomputed every step instead of cached


def restore_casing(text: str) -> str:
    """Sentence case for a normalised reference: first letter and the pronoun "I" upper, final period.

    Manifests hold normalised text (lowercase, no punctuation); Whisper writes cased, punctuated
    sentences. Teaching it lowercase would change its output style on every input, so a normalised
    reference gets back the shape Whisper already produces. Text that has capitals or punctuation
    is returned unchanged (it is not normalised).
    """
    text = text.strip()
    if not text or text != text.lower() or _PUNCT.search(text):
        return text
    text = _PRONOUN_I.sub("I", text)
    return text[0].upper() + text[1:] + "."


def target_text(text: str, casing: str) -> str:
    """The text the adapter learns to emit for a manifest reference (see :func:`restore_casing`)."""
    if casing not in CASINGS:
        raise InvalidInput(f"casing must be one of {', '.join(CASINGS)}, got {casing!r}")
    return restore_casing(text) if casing == "restore" else text.strip()


def decoder_prefix(backbone: WhisperBackbone, lang: str) -> list[int]:
    """Whisper's forced prefix: [sot, (<|lang|>, <|transcribe|>,) <|notimestamps|>]."""
    tok, gen = backbone.tokenizer, backbone.model.generation_config
    ids = [gen.decoder_start_token_id]
    if backbone.multilingual:
        lang_id = tok.convert_tokens_to_ids(f"<|{lang}|>")
        if lang_id == tok.unk_token_id:
            raise InvalidInput(f"backbone {backbone.name!r} has no language token for {lang!r}")
        ids += [lang_id, tok.convert_tokens_to_ids("<|transcribe|>")]
    return ids + [gen.no_timestamps_token_id]


def token_sequence(backbone: WhisperBackbone, text: str, lang: str) -> tuple[list[int], int]:
    """(prefix + text tokens + end of text, prefix length). Text starts with a space, as Whisper's do."""
    prefix = decoder_prefix(backbone, lang)
    body = backbone.tokenizer.encode(" " + text, add_special_tokens=False)
    eot = backbone.model.generation_config.eos_token_id
    ids = prefix + body + [eot]
    limit = backbone.model.config.max_target_positions
    if len(ids) > limit:
        raise InvalidInput(f"reference of {len(ids)} tokens exceeds the decoder's {limit}: {text[:60]!r}…")
    return ids, len(prefix)


def pad_labels(sequences: Sequence[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder inputs and shifted labels [B, T]: position t predicts token t+1; prefix and pad ignored."""
    length = max(len(ids) for ids, _ in sequences) - 1
    inputs = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    labels = torch.full((len(sequences), length), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, prefix) in enumerate(sequences):
        n = len(ids) - 1
        inputs[row, :n] = torch.tensor(ids[:-1])
        labels[row, prefix - 1 : n] = torch.tensor(ids[prefix:])
    return inputs, labels


@dataclass
class Examples:
    """One split, ready for training: per-utterance tensors on the backbone's device.

    ``features`` [N, n_mels, 3000] log-mels; ``frames`` [N] frames holding audio; ``embeddings``
    [N, 2·n_mels] router input; ``hidden`` [N, 1500, d_model] the encoder's hidden state entering
    layer ``start_layer``, or its final output when ``start_layer`` is the number of layers (None: run
    the whole encoder each step); ``sequences`` token ids with their
    prefix length; ``audios`` the decoded audio (for decoding).
    """

    utterances: list[Utterance]
    audios: list[np.ndarray]
    features: torch.Tensor
    frames: torch.Tensor
    embeddings: torch.Tensor
    sequences: list[tuple[list[int], int]]
    hidden: torch.Tensor | None = None
    start_layer: int = 0

    def __len__(self) -> int:
        return len(self.utterances)

    @property
    def texts(self) -> list[str]:
        return [u.text for u in self.utterances]

    @property
    def langs(self) -> list[str]:
        return [u.lang for u in self.utterances]


def usable(utterances: Sequence[Utterance]) -> list[Utterance]:
    """Utterances a 30 s window holds with a non-empty reference (others are skipped with a warning)."""
    kept = [u for u in utterances if u.text.strip() and u.duration <= WINDOW_SECONDS]
    if len(kept) < len(utterances):
        log.warning("skipping %d utterance(s) longer than %.0f s or without text", len(utterances) - len(kept),
                    WINDOW_SECONDS)
    return kept


def prepare(
    backbone: WhisperBackbone,
    utterances: Sequence[Utterance],
    *,
    casing: str = "restore",
    targets: Sequence[str] = (),
    batch_size: int = 8,
) -> Examples:
    """Decode, featurise and tokenise ``utterances`` once, and run the encoder layers ``targets`` leave alone.

    ``targets``: the adapted module names; the encoder runs up to the first adapted encoder layer.
    """
    utterances = usable(utterances)
    if not utterances:
        raise InvalidInput("no usable utterances (each needs text and at most 30 s of audio)")
    audios = [decode_audio(u.audio_path)[: int(WINDOW_SECONDS * SAMPLE_RATE_HZ)] for u in utterances]
    feats, masks = [], []
    for start in range(0, len(audios), batch_size):
        f, m = backbone.features(audios[start : start + batch_size])
        feats.append(f[..., :WINDOW_FRAMES])
        masks.append(m[..., :WINDOW_FRAMES])
    features = torch.cat(feats)
    frames = torch.cat(masks).sum(-1)
    sequences = [token_sequence(backbone, target_text(u.text, casing), u.lang) for u in utterances]
    examples = Examples(list(utterances), audios, features, frames, utterance_embedding(features, frames), sequences)
    encoder = backbone.model.get_encoder()
    start = first_adapted_layer(targets, len(encoder.layers))
    state_bytes = len(utterances) * encoder.config.max_source_positions * encoder.config.d_model * 4
    if state_bytes <= MAX_CACHE_BYTES:
        states = []
        with torch.inference_mode():
            for i in range(0, len(features), batch_size):
                out = encoder(features[i : i + batch_size], output_hidden_states=start < len(encoder.layers))
                states.append(out.last_hidden_state if start == len(encoder.layers) else out.hidden_states[start])
        examples.hidden, examples.start_layer = torch.cat(states).clone(), start  # clone: a normal tensor
    return examples


def first_adapted_layer(targets: Sequence[str], num_layers: int) -> int:
    """Index of the first encoder layer with an adapted module (``num_layers`` when none is)."""
    layers = [int(m.group(1)) for t in targets if (m := _ENCODER_LAYER.match(t))]
    return min(layers, default=num_layers)


def encoder_output(model: torch.nn.Module, examples: Examples, index: torch.Tensor) -> torch.Tensor:
    """Encoder output of rows ``index``: the cached state through the remaining layers (adapters active)."""
    encoder = model.get_encoder()
    if examples.hidden is None:
        return encoder(examples.features[index]).last_hidden_state
    hidden = examples.hidden[index]
    if examples.start_layer == len(encoder.layers):  # nothing adapted in the encoder: its final output
        return hidden
    for layer in encoder.layers[examples.start_layer :]:
        hidden = layer(hidden, None)
    return encoder.layer_norm(hidden)


def batch_order(count: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches of one epoch in a seeded random order (the last batch may be smaller)."""
    order = torch.randperm(count, generator=generator)
    yield from order.split(batch_size)
