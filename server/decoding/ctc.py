"""Decoding on a CTC backbone: one encoder pass, greedy best path, one segment per utterance.

Rows with different adapter slots share the forward pass as on Whisper. Audio longer than
``CHUNK_SECONDS`` is cut into pieces decoded in the same batch and joined. CTC has no beam search,
N-best, prompt, prefix, sampling, word timestamps or translation here: a request for any of them is
rejected with a message that names the option (never silently ignored).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..adapters.context import bank_context
from ..audio import SAMPLE_RATE_HZ
from ..backbones.ctc import CHUNK_SECONDS, CTCBackbone, greedy_ctc
from ..errors import InvalidInput
from .types import DecodingOptions, Segment, Transcription

log = logging.getLogger(__name__)


def _chunks(audios: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[int]]:
    size = int(CHUNK_SECONDS * SAMPLE_RATE_HZ)
    pieces, owners = [], []
    for i, audio in enumerate(audios):
        for start in range(0, max(len(audio), 1), size):
            pieces.append(audio[start : start + size])
            owners.append(i)
    return pieces, owners


def ctc_logits(backbone: CTCBackbone, audios: Sequence[np.ndarray], slots: Sequence[int] | None = None,
               embedding: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [B, T, V] and valid frames [B] for a batch, each row with its adapter slot (0 = none).

    ``embedding``: the SAML router input of each row (computed from ``audios`` when a slot needs it).
    """
    inputs = backbone.inputs(audios)
    lengths = backbone.output_lengths(inputs["attention_mask"])
    if not slots or not any(slots):
        return backbone.model(**inputs).logits, lengths
    if embedding is None:
        embedding = backbone.router_embedding(audios)
    with bank_context(backbone.model, slots=list(slots), utterance_embedding=embedding):
        return backbone.model(**inputs).logits, lengths


def _check_options(backbone: CTCBackbone, options: DecodingOptions) -> None:
    if options.beam_size > 1 or options.nbest > 1:
        raise InvalidInput(f"backbone {backbone.name!r} is a CTC model: it decodes greedily (beam_size 1, nbest 1)")
    if options.language not in (None, "en", "english") and backbone.languages and \
            options.language not in backbone.languages:
        raise InvalidInput(f"backbone {backbone.name!r} does not know language {options.language!r}")
    if options.word_timestamps:
        raise InvalidInput(f"backbone {backbone.name!r} is a CTC model: word timestamps are not available")
    if options.task == "translate":
        raise InvalidInput(f"backbone {backbone.name!r} is a CTC model: it cannot translate")
    for name in ("prompt", "prefix"):
        if getattr(options, name):
            raise InvalidInput(f"backbone {backbone.name!r} is a CTC model: {name} does not apply; leave it out")
    if options.temperature > 0:
        raise InvalidInput(f"backbone {backbone.name!r} is a CTC model: it decodes greedily (temperature 0)")
    if options.logprobs:
        raise InvalidInput(f"backbone {backbone.name!r} is a CTC model: token log-probabilities are not available")


def transcribe_ctc(backbone: CTCBackbone, audios: list[np.ndarray], options: DecodingOptions | None = None,
                   slots: Sequence[int] | None = None) -> list[Transcription]:
    """Greedy CTC transcripts of 16 kHz mono arrays (see the module docstring for what applies)."""
    options = options or DecodingOptions()
    _check_options(backbone, options)
    pieces, owners = _chunks(audios)
    piece_slots = [slots[i] for i in owners] if slots and any(slots) else None
    embedding = None
    if piece_slots:  # the router sees the whole utterance, not one piece
        embedding = backbone.router_embedding(audios)[torch.tensor(owners)]
    with torch.inference_mode():
        logits, lengths = ctc_logits(backbone, pieces, piece_slots, embedding)
    frame_seconds = (max(len(p) for p in pieces) / SAMPLE_RATE_HZ) / max(logits.shape[1], 1)
    decoded = greedy_ctc(logits, lengths.tolist(), backbone.blank_id)
    results = [Transcription("", "en", len(a) / SAMPLE_RATE_HZ) for a in audios]
    offsets = [0.0] * len(audios)
    for piece, owner, path in zip(pieces, owners, decoded):
        text = backbone.text([t for t, _ in path])
        result = results[owner]
        if text:
            start = offsets[owner] + path[0][1] * frame_seconds
            end = min(offsets[owner] + (path[-1][1] + 1) * frame_seconds, result.duration)
            tokens = [t for t, _ in path]
            result.segments.append(Segment(len(result.segments), round(start, 2), round(end, 2), text, tokens))
        offsets[owner] += len(piece) / SAMPLE_RATE_HZ
    for result in results:
        result.text = " ".join(s.text for s in result.segments)
    return results


class CTCRequest:
    """One utterance for :class:`CTCDecoder`; also its own (single) pass."""

    max_rows = 1
    needs_encoder = True

    def __init__(self, audio: np.ndarray, options: DecodingOptions, slot: int,
                 listener: Callable[[str], None] | None = None):
        self.audio, self.options, self.slot = audio, options, slot
        self.listener = listener  # sent the whole text once it is decoded (one pass: nothing earlier)
        self.done = False
        self.cancelled = False
        self.result: Transcription | None = None
        self.pending: CTCRequest | None = self

    @property
    def request(self) -> CTCRequest:
        return self

    @property
    def first(self) -> bool:
        return True


class CTCDecoder:
    """The decode-loop interface of :class:`~splitasr.decoding.whisper.decoder.WhisperDecoder` for a
    CTC backbone: admitted utterances decode in one batched encoder pass at the next step."""

    def __init__(self, backbone: CTCBackbone, max_rows: int = 32):
        self.backbone = backbone
        self.max_rows = max_rows
        self._admitted: list[CTCRequest] = []
        self._waiting: list[CTCRequest] = []

    checking = False  # (the Whisper decoder's speech checks; none here)

    @property
    def live_rows(self) -> int:
        return len(self._admitted)

    def check(self, audio: np.ndarray, options: DecodingOptions) -> None:
        _check_options(self.backbone, options)

    def start(self, audio: np.ndarray, options: DecodingOptions, slot: int = 0, seed: int = 0,
              listener: Callable[[str], None] | None = None) -> CTCRequest:
        self.check(audio, options)
        request = CTCRequest(audio, options, slot, listener)
        self._waiting.append(request)
        return request

    def waiting(self) -> list[CTCRequest]:
        return list(self._waiting)

    def admit(self, requests: Sequence[CTCRequest]) -> None:
        for r in requests:
            self._waiting.remove(r)
            r.pending = None
            self._admitted.append(r)

    def rows_by_request(self) -> dict[int, int]:
        return {id(r): 1 for r in self._admitted}

    def poll(self) -> list[CTCRequest]:
        """Nothing settles between steps here (the Whisper decoder's speech checks do)."""
        return []

    def cancel(self, request: CTCRequest) -> None:
        request.cancelled = True
        for queue in (self._waiting, self._admitted):
            if request in queue:
                queue.remove(request)
        request.done = True
        request.result = Transcription("", "en", len(request.audio) / SAMPLE_RATE_HZ)

    def step(self) -> list[CTCRequest]:
        batch, self._admitted = self._admitted, []
        results = transcribe_ctc(self.backbone, [r.audio for r in batch], batch[0].options if batch else None,
                                 [r.slot for r in batch])
        for r, result in zip(batch, results):
            r.done, r.result = True, result
            if r.listener is not None and result.text:
                try:
                    r.listener(result.text)
                except Exception:  # a listener that fails loses its text, never the batch
                    log.exception("a text listener failed")
        return batch

    def reset(self) -> None:
        self._admitted, self._waiting = [], []
