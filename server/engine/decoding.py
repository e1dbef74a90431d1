"""Decoding strategies on a Whisper backbone: greedy, beam, a real N-best list, segments.

The timestamped path uses Whisper's own generation (suppress tokens, timestamp rules, 30 s windows
for long-form audio). The N-best path calls the generic beam search directly, because Whisper's
``generate(num_return_sequences=k)`` returns k copies of the best beam; it applies the suppress rules
through a plain ``GenerationConfig``.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from transformers import GenerationConfig, GenerationMixin

from ..adapters.context import bank_context
from ..adapters.saml import utterance_embedding
from ..audio import SAMPLE_RATE_HZ
from ..backbones.whisper import WINDOW_FRAMES, WINDOW_SECONDS, WhisperBackbone
from ..errors import InvalidInput

MAX_BEAM_SIZE = 16
MAX_NBEST = 16
TASKS = ("transcribe", "translate")
FALLBACK_TEMPERATURES = (0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass(frozen=True)
class DecodingOptions:
    beam_size: int = 1  # 1 = greedy
    language: str | None = None  # None: detect on multilingual backbones, English on .en ones
    task: str = "transcribe"  # or "translate" (to English; multilingual backbones only)
    temperature: float = 0.0  # > 0 samples instead of searching
    prompt: str | None = None  # text that conditions the first window (vocabulary, spelling)
    nbest: int = 1  # > 1 also returns the k best distinct hypotheses (audio up to 30 s)
    max_new_tokens: int | None = None  # per 30 s window; None = the model's limit
    # A segment whose text compresses better than this (zlib) is a repetition loop ("play, play, play, …"):
    # its utterance is decoded again with sampling at rising temperatures (Whisper's fallback rule,
    # also faster-whisper's default). None turns the fallback off.
    compression_ratio_threshold: float | None = 2.4

    def __post_init__(self) -> None:
        if not 1 <= self.beam_size <= MAX_BEAM_SIZE:
            raise InvalidInput(f"beam_size must be between 1 and {MAX_BEAM_SIZE}, got {self.beam_size}")
        if not 1 <= self.nbest <= MAX_NBEST:
            raise InvalidInput(f"nbest must be between 1 and {MAX_NBEST}, got {self.nbest}")
        if not 0.0 <= self.temperature <= 1.0:
            raise InvalidInput(f"temperature must be between 0 and 1, got {self.temperature}")
        if self.task not in TASKS:
            raise InvalidInput(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")


@dataclass
class Segment:
    id: int
    start: float  # seconds
    end: float
    text: str
    tokens: list[int]


@dataclass
class Hypothesis:
    text: str
    tokens: list[int]
    logprob: float  # sum of token log-probabilities (including end of text)

    @property
    def avg_logprob(self) -> float:
        return self.logprob / max(1, len(self.tokens) + 1)


@dataclass
class Transcription:
    text: str
    language: str
    duration: float  # seconds of audio
    segments: list[Segment] = field(default_factory=list)
    nbest: list[Hypothesis] = field(default_factory=list)


def _language_code(backbone: WhisperBackbone, language: str | None) -> str | None:
    if not backbone.multilingual:
        if language not in (None, "en", "english"):
            raise InvalidInput(f"backbone {backbone.name!r} is English-only; language {language!r} is not available")
        return None
    if language is None:
        return None
    code = language.lower().strip()
    if code not in backbone.languages:
        from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

        code = TO_LANGUAGE_CODE.get(code, code)
    if code not in backbone.languages:
        raise InvalidInput(f"unknown language {language!r}; use an ISO code such as 'en', 'ko', 'de'")
    return code


def detect_languages(backbone: WhisperBackbone, features: torch.Tensor) -> list[str]:
    """Most likely language of each row's first 30 s (multilingual backbones)."""
    if not backbone.multilingual:
        return ["en"] * features.shape[0]
    with torch.inference_mode():
        ids = backbone.model.detect_language(input_features=features[..., :WINDOW_FRAMES])
    return [backbone.tokenizer.convert_ids_to_tokens(int(i)).strip("<|>") for i in ids]


def _text(backbone: WhisperBackbone, tokens: list[int]) -> str:
    """Decode text tokens, dropping timestamps and special tokens."""
    limit = backbone.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return backbone.tokenizer.decode([t for t in tokens if t < limit]).strip()


@contextmanager
def adapters_selected(
    backbone: WhisperBackbone, slots: Sequence[int] | None, features: torch.Tensor, mask: torch.Tensor
) -> Iterator[None]:
    """Run the block with each row's adapter slot selected (slot 0 or ``None``: the plain backbone)."""
    if not slots or not any(slots):
        yield
        return
    embedding = utterance_embedding(features, mask.sum(-1))
    with bank_context(backbone.model, slots=list(slots), utterance_embedding=embedding):
        yield


@contextmanager
def adapters_per_pass(
    backbone: WhisperBackbone, slots: Sequence[int] | None, features: torch.Tensor, mask: torch.Tensor
) -> Iterator[None]:
    """Like :func:`adapters_selected`, for Whisper's own ``generate`` (timestamps, windows).

    That loop drops finished rows and decodes the others again from their last timestamp (long audio,
    and also short audio whose last segment does not close the window), so one selection for the
    whole call would no longer match the rows. Each decoding pass gets the slots of its own rows.
    """
    if not slots or not any(slots):
        yield
        return
    model, slot_list = backbone.model, list(slots)
    embedding = utterance_embedding(features, mask.sum(-1))
    original = model.generate_with_fallback

    def generate_with_fallback(*args, **kwargs):
        rows = list(kwargs["batch_idx_map"])
        with bank_context(model, slots=[slot_list[i] for i in rows], utterance_embedding=embedding[rows]):
            return original(*args, **kwargs)

    model.generate_with_fallback = generate_with_fallback
    try:
        yield
    finally:
        del model.generate_with_fallback


def transcribe(
    backbone: WhisperBackbone,
    audios: list[np.ndarray],
    options: DecodingOptions = DecodingOptions(),
    slots: Sequence[int] | None = None,
) -> list[Transcription]:
    """Transcribe a batch of 16 kHz mono arrays; each may be longer than 30 s.

    ``slots``: the adapter slot of each row (0 = none), for a backbone with an adapter bank.
    A CTC backbone decodes greedily instead (:mod:`splitasr.engine.ctc_decoding`).
    """
    if not isinstance(backbone, WhisperBackbone):
        from .ctc_decoding import transcribe_ctc

        return transcribe_ctc(backbone, audios, options, slots)
    window = WINDOW_SECONDS * SAMPLE_RATE_HZ
    if slots and any(slots) and len(audios) > 1 and any(len(a) > window for a in audios):
        # Long-form decoding drops finished rows between windows, which would shift the rows'
        # adapter selection: decode such batches one utterance at a time.
        return [transcribe(backbone, [a], options, [s])[0] for a, s in zip(audios, slots)]
    features, mask = backbone.features(audios)
    language = _language_code(backbone, options.language)
    languages = [language] * len(audios) if language else detect_languages(backbone, features)
    kwargs: dict = {
        "attention_mask": mask,
        "return_timestamps": True,
        "return_segments": True,
        "num_beams": options.beam_size,
        "max_new_tokens": options.max_new_tokens,
    }
    if backbone.multilingual:
        kwargs.update(language=languages, task=options.task)
    if options.temperature > 0:
        kwargs.update(do_sample=True, temperature=options.temperature)
    if options.prompt:
        kwargs["prompt_ids"] = torch.tensor(backbone.tokenizer.get_prompt_ids(options.prompt), device=backbone.device)
    with torch.inference_mode(), adapters_per_pass(backbone, slots, features, mask):
        out = backbone.model.generate(features, **kwargs)
    results = []
    for i, audio in enumerate(audios):
        segments = []
        for seg in out["segments"][i]:
            tokens = [int(t) for t in seg["tokens"]]
            text = _text(backbone, tokens)
            if text:
                start, end = float(seg["start"]), float(seg["end"])
                segments.append(Segment(len(segments), round(start, 2), round(end, 2), text, tokens))
        duration = len(audio) / SAMPLE_RATE_HZ
        if segments:  # the last window's end is padded audio: clamp to the real duration
            segments[-1].end = min(segments[-1].end, round(duration, 2))
        text = " ".join(s.text for s in segments)
        results.append(Transcription(text, languages[i] or "en", duration, segments))
    if options.temperature == 0 and options.compression_ratio_threshold:
        _fallback(backbone, audios, options, slots, results)
    if options.nbest > 1:
        for result, hyps in zip(results, nbest(backbone, audios, options, languages, slots)):
            result.nbest = hyps
    return results


def compression_ratio(text: str) -> float:
    """Length of the UTF-8 text over its zlib-compressed length (high for repetition loops)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def _looping(result: Transcription, threshold: float) -> bool:
    return any(compression_ratio(s.text) > threshold for s in result.segments)


def _fallback(backbone: WhisperBackbone, audios: list[np.ndarray], options: DecodingOptions,
              slots: Sequence[int] | None, results: list[Transcription]) -> None:
    """Decode the utterances stuck in a repetition loop again, sampling at rising temperatures.

    Each keeps the first attempt that does not loop, else the attempt that compresses least. Sampling
    uses a fixed seed, so a request gives the same text every time.
    """
    threshold = options.compression_ratio_threshold
    todo = [i for i, r in enumerate(results) if _looping(r, threshold)]
    worst = {i: max(compression_ratio(s.text) for s in results[i].segments) for i in todo}
    for temperature in FALLBACK_TEMPERATURES:
        if not todo:
            return
        retry = replace(options, beam_size=1, temperature=temperature, nbest=1)
        devices = [backbone.device] if torch.device(backbone.device).type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(0)
            again = transcribe(backbone, [audios[i] for i in todo], retry, [slots[i] for i in todo] if slots else None)
        still = []
        for i, result in zip(todo, again):
            ratio = max((compression_ratio(s.text) for s in result.segments), default=0.0)
            if ratio < worst[i]:
                results[i], worst[i] = result, ratio
            if ratio > threshold:
                still.append(i)
        todo = still


def _prompt_ids(backbone: WhisperBackbone, language: str | None, task: str) -> list[int]:
    tok = backbone.tokenizer
    ids = [backbone.model.generation_config.decoder_start_token_id]
    if backbone.multilingual:
        ids += [tok.convert_tokens_to_ids(f"<|{language or 'en'}|>"), tok.convert_tokens_to_ids(f"<|{task}|>")]
    return ids + [backbone.model.generation_config.no_timestamps_token_id]


def nbest(
    backbone: WhisperBackbone,
    audios: list[np.ndarray],
    options: DecodingOptions,
    languages: list[str | None] | None = None,
    slots: Sequence[int] | None = None,
) -> list[list[Hypothesis]]:
    """The ``options.nbest`` best distinct hypotheses per utterance by beam search (no timestamps).

    Audio must be at most 30 s: a long-form N-best has no single meaning.
    """
    if any(len(a) > WINDOW_SECONDS * SAMPLE_RATE_HZ for a in audios):
        raise InvalidInput("an N-best list needs audio of at most 30 s; split longer audio first")
    k = options.nbest
    # spare beams: some decode to the same text; a 1-best with beam_size 1 is plain greedy decoding
    beams = options.beam_size if k == 1 else min(MAX_BEAM_SIZE * 2, max(options.beam_size, 2 * k))
    features, mask = backbone.features(audios)
    features, mask = features[..., :WINDOW_FRAMES], mask[..., :WINDOW_FRAMES]
    languages = languages or [_language_code(backbone, options.language)] * len(audios)
    gen = backbone.model.generation_config
    config = GenerationConfig(
        num_beams=beams,
        num_return_sequences=beams,
        max_new_tokens=options.max_new_tokens or (gen.max_length // 2),
        suppress_tokens=gen.suppress_tokens,
        begin_suppress_tokens=gen.begin_suppress_tokens,
        decoder_start_token_id=gen.decoder_start_token_id,
        eos_token_id=gen.eos_token_id,
        pad_token_id=gen.pad_token_id,
        length_penalty=1.0,
        output_scores=True,
        return_dict_in_generate=True,
    )
    prompts = torch.tensor(
        [_prompt_ids(backbone, lang, options.task) for lang in languages], device=backbone.device
    )
    with torch.inference_mode(), adapters_selected(backbone, slots, features, mask):
        out = GenerationMixin.generate(
            backbone.model, input_features=features, decoder_input_ids=prompts, generation_config=config
        )
    eot = gen.eos_token_id
    if beams == 1:  # greedy search reports per-step scores only: sum the chosen tokens' log-probabilities
        steps = torch.stack(out.scores, dim=1).float().log_softmax(-1)
        chosen = out.sequences[:, prompts.shape[1]:, None]
        token_logprobs = steps.gather(-1, chosen).squeeze(-1)
        generated = out.sequences[:, prompts.shape[1]:]
        after_eot = (generated == eot).long().cumsum(-1) - (generated == eot).long()
        totals = token_logprobs.masked_fill(after_eot > 0, 0).sum(-1)
    results: list[list[Hypothesis]] = []
    for i in range(len(audios)):
        seen: set[str] = set()
        hyps: list[Hypothesis] = []
        for j in range(i * beams, (i + 1) * beams):
            seq = out.sequences[j, prompts.shape[1]:].tolist()
            tokens = seq[: seq.index(eot)] if eot in seq else seq
            text = _text(backbone, tokens)
            if text in seen:
                continue
            seen.add(text)
            if beams == 1:
                logprob = float(totals[j])
            else:  # sequences_scores = sum(logprob) / generated_length ** length_penalty (end of text included)
                logprob = float(out.sequences_scores[j]) * (len(tokens) + (1 if eot in seq else 0))
            hyps.append(Hypothesis(text, tokens, logprob))
            if len(hyps) == k:
                break
        results.append(hyps)
    return results
