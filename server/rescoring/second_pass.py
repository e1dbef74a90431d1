"""The optional second pass of a transcription: rescore its N-best list and keep the best hypothesis.

Used by the engine (many requests, each with its own rescorer slot, scored in one forward pass) and by
the command line. When the rescorer picks another hypothesis than the first pass's text, the result's
text becomes that hypothesis and its segments one segment over the whole audio (the N-best pass has no
timestamps).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..decoding import Segment, Transcription
from .data import rescorer_text
from .encoder import DEFAULT_ENCODER, load_encoder
from .fileformat import load_rescorer
from .model import Fusion, Rescorer, ScoringModel, choose

DEFAULT_NBEST = 4  # hypotheses rescored per utterance


def rescore(model: ScoringModel, items: Sequence[tuple[Transcription, int, Fusion]]) -> list[Transcription]:
    """Rescore each (result with an N-best list, rescorer slot, fusion) in one forward pass; updates in place."""
    import torch

    from .data import NBestList

    texts, slots = [], []
    for result, slot, _ in items:
        texts += [rescorer_text(h.text) for h in result.nbest]
        slots += [slot] * len(result.nbest)
    if texts:
        with torch.no_grad():
            flat = model(texts, slots)[0].tolist()
    i = 0
    for result, _, fusion in items:
        n = len(result.nbest)
        if n > 1:
            hyps = result.nbest
            x = NBestList("", [h.text for h in hyps], [h.logprob for h in hyps], [len(h.tokens) + 1 for h in hyps],
                          [0] * n, 0)
            best = hyps[choose(x, flat[i : i + n], fusion)]
            if best.text != result.text:
                result.text = best.text
                result.segments = [Segment(0, 0.0, round(result.duration, 2), best.text, best.tokens)] if best.text else []
            result.nbest = [best] + [h for h in hyps if h is not best]
        i += n
    return [result for result, _, _ in items]


def open_rescorer(path: str | os.PathLike[str], encoder_name: str = DEFAULT_ENCODER) -> tuple[ScoringModel, Rescorer]:
    """A one-slot scoring model holding the rescorer file at ``path`` (validated) in slot 1."""
    encoder = load_encoder(encoder_name)
    rescorer = load_rescorer(Path(path), encoder=encoder.spec)
    model = ScoringModel(encoder, rescorer.lora.targets, num_slots=1, max_rank=rescorer.lora.config.r)
    model.load(1, rescorer)
    return model, rescorer
