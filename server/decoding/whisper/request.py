"""One utterance of any length: Whisper's sequential 30 s windows, each with its temperature fallback.

A request walks its audio with a ``seek`` pointer (openai/whisper's long-form algorithm, with the window
bounds transformers uses, so short clips decode exactly as before): it cuts the window at ``seek``,
computes its log-mel, and hands the batch one *pass* at a time (:class:`~.batch.Pass`). When a pass
finishes, the window's result is checked against Whisper's thresholds (compression ratio, average
log-probability; a likely <|nospeech|> means silence, not failure); a failed window is decoded again
at the next temperature, reusing its encoder output; an accepted one becomes segments, and ``seek``
moves to the last complete segment (or the window's end). Windows whose audio is digitally silent
(peak below ``SILENCE_PEAK``) are skipped without running the encoder. A window that fails its first
decode may be quiet noise rather than hard speech: when the decoder has a ``speech_check`` (the engine's
VAD), the window's audio is checked first (off the decode thread; the request holds no rows meanwhile),
and a window without speech ends there, empty, instead of running five hotter passes of sampled
hallucinations (about 20 times the cost of the check on tiny.en).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
import torch

from ...audio import SAMPLE_RATE_HZ
from ..types import (
    FALLBACK_TEMPERATURES,
    DecodingOptions,
    Hypothesis,
    Segment,
    Transcription,
    compression_ratio,
)
from .batch import Candidate, Pass
from .vocab import FRAME_S, INPUT_STRIDE, TIME_PRECISION_S, Vocab

log = logging.getLogger(__name__)

HOP_SAMPLES = 160  # audio samples per mel frame
WINDOW_FRAMES = 3000  # mel frames in a 30 s window
SILENCE_PEAK = 1e-3  # -60 dBFS: a window whose loudest sample is quieter holds nothing to transcribe
MAX_NBEST_WIDTH = 32  # beams (or samples) searched for an N-best list
# Compute budget: decoder row-steps a request may spend (speech needs about 5 per audio second; a window
# stuck in a loop through all six temperatures about 200). Past it, a failing window keeps its best
# attempt instead of trying hotter temperatures, so no file costs more than a fixed multiple of its length.
BUDGET_ROW_STEPS = 2000
BUDGET_ROW_STEPS_PER_SECOND = 40


@dataclass(eq=False)
class Window:
    request: WhisperRequest
    seek: int  # first mel frame
    frames: int  # mel frames of audio in it (at most 3000)
    features: torch.Tensor  # [n_mels, 3000] (or fewer with a short audio_ctx)
    encoder_out: torch.Tensor | None = None  # [1, S, d] once encoded; kept for fallback passes
    attempts: list[tuple[Pass, Candidate, float, float]] = field(default_factory=list)
    # sampled tokens whose text a listener was sent (and their log-probabilities): a fallback pass of
    # this window starts from them, so text once sent is never taken back
    sent: list[int] = field(default_factory=list)
    sent_logprobs: list[float] = field(default_factory=list)


class WhisperRequest:
    """Drives one utterance through windows and passes; ``result`` is set when ``done``."""

    def __init__(self, audio: np.ndarray, options: DecodingOptions, *, vocab: Vocab, features, encode, decode,
                 language: str | None, slot: int = 0, mixture: torch.Tensor | None = None, seed: int = 0,
                 max_rows: int = 1 << 30, speech_check: Callable[[np.ndarray], Future] | None = None,
                 listener: Callable[[str], None] | None = None):
        """``features(audio, frames)``: log-mel [n_mels, frames] of up to 30 s of audio; ``encode(text)``
        and ``decode(tokens)``: the tokenizer; ``language``: None to detect (multilingual backbones);
        ``max_rows``: the batch's rows, the widest pass (fallback samples and N-best beams are cut to it);
        ``speech_check(audio)``: a future of whether a window's audio holds speech (see the module doc);
        ``listener(text)``: called with each piece of new stable text (see :meth:`publish`)."""
        self.audio = audio
        self.options = options
        self.vocab = vocab
        self._features = features
        self._encode = encode
        self._decode = decode
        self.language = language
        self.slot = slot
        self.mixture = mixture
        self.seed = seed
        self.max_rows = max_rows
        self._speech_check = speech_check
        self.checking: tuple[Future, Pass] | None = None  # a failed window's speech check and its fallback
        self.listener = listener
        self.sent_text = ""  # what the listener was sent so far
        self.duration = len(audio) / SAMPLE_RATE_HZ
        # transformers' window bounds: short audio is one padded 30 s window, long audio its own length
        self.content_frames = max(WINDOW_FRAMES, len(audio) // HOP_SAMPLES)
        self.seek = 0
        self.segments: list[Segment] = []
        self.nbest: list[Hypothesis] = []
        self.window: Window | None = None
        self.pending: Pass | None = None  # the pass waiting for admission
        self.done = False
        self.cancelled = False
        self.error: str | None = None  # set when the request failed (its result is then empty)
        self.result: Transcription | None = None
        self.windows_decoded = 0
        self.spent = 0  # decoder row-steps so far (see BUDGET_ROW_STEPS)
        self.budget = BUDGET_ROW_STEPS + int(BUDGET_ROW_STEPS_PER_SECOND * self.duration)
        self.last_speech = 0.0  # end of the last word so far (word timestamps' heuristics)
        if options.temperature > 0:
            self.temperatures: tuple[float, ...] = (options.temperature,)
        elif options.compression_ratio_threshold is None and options.logprob_threshold is None:
            self.temperatures = (0.0,)
        else:
            self.temperatures = (0.0, *FALLBACK_TEMPERATURES)
        self.pending = self._next_window()

    @property
    def nbest_mode(self) -> bool:
        return self.options.nbest > 1

    @property
    def timestamps(self) -> bool:
        return not (self.options.without_timestamps or self.nbest_mode)

    @property
    def needs_language(self) -> bool:
        return self.vocab.multilingual and self.language is None

    # windows and passes ---------------------------------------------------------------------------
    def _next_window(self) -> Pass | None:
        while not self.cancelled and self.seek < self.content_frames:
            frames = min(WINDOW_FRAMES, self.content_frames - self.seek)
            start = self.seek * HOP_SAMPLES
            chunk = self.audio[start: start + frames * HOP_SAMPLES]
            if not len(chunk) or float(np.abs(chunk).max()) < SILENCE_PEAK:
                self.seek += frames
                continue
            self.window = Window(self, self.seek, frames, self._features(chunk, self._feature_frames(chunk)))
            return self._make_pass(0)
        self._finish()
        return None

    def _feature_frames(self, chunk: np.ndarray) -> int:
        """Mel frames the encoder reads: the whole window, or (audio_ctx) as few as hold the clip."""
        ctx = self.options.audio_ctx_seconds
        if ctx is None or self.content_frames > WINDOW_FRAMES:
            return WINDOW_FRAMES
        wanted = max(len(chunk) // HOP_SAMPLES + 1, int(ctx * 100))
        return min(WINDOW_FRAMES, wanted + wanted % 2)

    def _make_pass(self, attempt: int) -> Pass:
        options, temperature = self.options, self.temperatures[attempt]
        if self.nbest_mode:
            width = min(MAX_NBEST_WIDTH, max(options.beam_size if temperature == 0 else options.best_of,
                                             2 * options.nbest))
        else:
            width = options.beam_size if temperature == 0 else options.best_of
        width = max(1, min(width, self.max_rows))  # a pass wider than the batch could never be admitted
        prompt, sot_index = self.prompt()
        budget = options.max_new_tokens or self.vocab.text_ctx // 2
        sent = self.window.sent
        return Pass(self.window, prompt + sent, sot_index, self.timestamps, temperature, width,
                    max_new_tokens=min(budget, self.vocab.text_ctx - len(prompt)),
                    seed=self.seed * 100_003 + self.windows_decoded * 101 + attempt,
                    length_penalty=options.length_penalty, forced=len(sent),
                    forced_logprobs=list(self.window.sent_logprobs), timestamp_begin=self.vocab.timestamp_begin)

    def prompt(self) -> tuple[list[int], int]:
        """The window's decoder prompt and the index of <|startoftranscript|> in it."""
        vocab, options = self.vocab, self.options
        tokens: list[int] = []
        if options.prompt:
            text = self._encode(" " + options.prompt.strip())
            tokens = [vocab.sot_prev, *text[-(vocab.text_ctx // 2 - 1):]]
        sot_index = len(tokens)
        tokens += vocab.sot_sequence(self.language, options.task)
        if not self.timestamps:
            tokens.append(vocab.no_timestamps)
        if options.prefix and self.seek == 0:
            if self.timestamps:
                tokens.append(vocab.timestamp_begin)
            tokens += self._encode(" " + options.prefix.strip())[: vocab.text_ctx // 2 - 1]
        return tokens, sot_index

    # text as it is decoded ----------------------------------------------------------------------------
    def publish(self, live: Pass | None = None) -> None:
        """Send the listener what became stable since the last call: the accepted windows' text and,
        while ``live`` (a one-row pass of the current window) decodes, the part of its tokens that no
        later step can change. The pieces sent concatenate to the final ``result.text`` exactly.

        Stable means: the tokens before the window's open segment once a segment boundary (a timestamp
        pair) was seen, since an open segment at the window's end is dropped and decoded again in the
        next window; no trailing half of a UTF-8 character (byte-level BPE); nothing while the window
        may yet be judged silent (its no-speech probability is above the threshold) or while its text so
        far would fail the fallback thresholds. A window that fails them after text was sent is decoded
        again with the sent tokens as its forced beginning (``Window.sent``). Beam search and
        ``best_of`` sampling rank whole hypotheses, so their text is sent when the window is accepted.
        """
        if self.listener is None:
            return
        texts = [s.text for s in self.segments]
        window, tokens, stable = self.window, [], 0
        if live is not None and live.window is window and live.rows and self._may_stream(live):
            row = live.rows[0]
            tokens = row.sampled
            stable = self._stable_count(tokens)
            pieces = self._window_texts(tokens[:stable])
            if self._would_fail(" ".join(pieces), row.token_logprobs[:stable]):
                return
            texts += pieces
        text = " ".join(texts).rstrip("\ufffd")
        if len(text) <= len(self.sent_text) or not text.startswith(self.sent_text):
            return
        if stable and window is not None:
            window.sent, window.sent_logprobs = tokens[:stable], live.rows[0].token_logprobs[:stable]
        piece, self.sent_text = text[len(self.sent_text):], text
        try:
            self.listener(piece)
        except Exception:  # a listener that fails loses its text, never the batch it decodes in
            log.exception("a text listener failed; it gets no more text")
            self.listener = None

    def _may_stream(self, p: Pass) -> bool:
        threshold = self.options.no_speech_threshold
        return p.width == 1 and not self.nbest_mode and (threshold is None or p.no_speech_prob <= threshold)

    def _would_fail(self, text: str, logprobs: list[float]) -> bool:
        """Whether the window's text so far is past Whisper's fallback thresholds (hold it back)."""
        options = self.options
        ratio = options.compression_ratio_threshold
        if ratio is not None and compression_ratio(text) > ratio:
            return True
        return (options.logprob_threshold is not None and bool(logprobs)
                and sum(logprobs) / len(logprobs) < options.logprob_threshold)

    def _stable_count(self, tokens: list[int]) -> int:
        """How many of a window's sampled ``tokens`` keep their text whatever comes next (see
        :meth:`_split`: the segments between timestamp pairs, and the last one once it is closed by a
        timestamp; with no pair yet, all of them)."""
        if not self.timestamps:
            return len(tokens)
        ts = self.vocab.timestamp_begin
        cuts = _cuts(tokens, ts)
        if not cuts:
            return len(tokens)
        if tokens[-1] >= ts and any(t < ts for t in tokens[cuts[-1]:]):
            return len(tokens)
        return cuts[-1]

    def _window_texts(self, tokens: list[int]) -> list[str]:
        """The non-empty segment texts of a window's (stable) tokens, as :meth:`_split` cuts them."""
        bounds = [0, *_cuts(tokens, self.vocab.timestamp_begin), len(tokens)] if self.timestamps else [0, len(tokens)]
        texts = [self._decode([t for t in tokens[a:b] if t < self.vocab.eot]).strip() for a, b in pairwise(bounds)]
        return [t for t in texts if t]

    # results ----------------------------------------------------------------------------------------
    def on_pass_done(self, p: Pass) -> Window | None:
        """Judge a finished pass. Returns the window when it is accepted (for word timestamps, then
        :meth:`accepted`); otherwise sets ``pending`` to its next pass (fallback) or finishes."""
        window = self.window
        assert window is not None and p.window is window
        if p.failed:
            self.error = p.failed
        if self.cancelled or self.error:
            self._finish()
            return None
        best = p.ranked()[0] if p.candidates else Candidate([], 0.0, [])
        text = self._decode([t for t in best.tokens if t < self.vocab.eot])
        ratio = compression_ratio(text)
        avg = best.logprob / (len(best.tokens) + 1)
        window.attempts.append((p, best, ratio, avg))
        options = self.options
        failed = (options.compression_ratio_threshold is not None and ratio > options.compression_ratio_threshold) or (
            options.logprob_threshold is not None and avg < options.logprob_threshold)
        if self._silent(p, avg):
            failed = False
        attempt = len(window.attempts)
        if failed and attempt < len(self.temperatures) and self.spent < self.budget:
            if attempt == 1 and self._speech_check is not None and not window.sent:  # (sent text stays)
                self.checking = (self._speech_check(self._window_audio(window)), self._make_pass(attempt))
            else:
                self.pending = self._make_pass(attempt)
            return None
        if failed:  # every temperature failed: faster-whisper's choice among the attempts
            fine = [a for a in window.attempts if options.compression_ratio_threshold is None
                    or a[2] <= options.compression_ratio_threshold]
            p, best, ratio, avg = max(fine or window.attempts, key=lambda a: a[3])
        window.attempts = [(p, best, ratio, avg)]
        return window

    def _window_audio(self, window: Window) -> np.ndarray:
        start = window.seek * HOP_SAMPLES
        return self.audio[start: start + window.frames * HOP_SAMPLES]

    def speech_checked(self) -> bool:
        """Called when ``checking`` is done: speech queues the fallback pass; no speech (or a failed
        check) ends the window empty and moves on. Returns whether the request is now done."""
        assert self.checking is not None
        future, fallback = self.checking
        self.checking = None
        if self.cancelled:
            self._finish()
            return True
        try:
            speech = future.result()
        except Exception:  # noqa: BLE001 - a broken check must not lose the window: decode it as usual
            speech = True
        if speech:
            self.pending = fallback
            return False
        window = self.window
        assert window is not None
        self.seek += window.frames
        self.windows_decoded += 1
        window.encoder_out = None
        self.pending = self._next_window()
        return self.done

    def _silent(self, p: Pass, avg: float) -> bool:
        threshold, floor = self.options.no_speech_threshold, self.options.logprob_threshold
        return threshold is not None and p.no_speech_prob > threshold and (floor is None or avg < floor)

    def window_segments(self) -> list[Segment]:
        """The accepted window's segments (before word timestamps)."""
        window = self.window
        assert window is not None
        p, best, ratio, avg = window.attempts[0]
        if self._silent(p, avg):
            self._advance = window.frames
            return []
        if not self.timestamps and self.windows_decoded == 0:
            self._collect_nbest(p)
        segments, self._advance = self._split(best, window)
        for s in segments:
            s.seek, s.temperature, s.avg_logprob = window.seek, p.temperature, avg
            s.compression_ratio, s.no_speech_prob = ratio, p.no_speech_prob
        return segments

    def accepted(self, segments: list[Segment]) -> None:
        """Record the accepted window's ``segments`` (with word timestamps if asked) and move on."""
        window = self.window
        assert window is not None
        self.segments += [s for s in segments if s.text]
        self.seek += self._advance
        self.windows_decoded += 1
        window.encoder_out = None
        self.pending = self._next_window()

    def _collect_nbest(self, p: Pass) -> None:
        seen: set[str] = set()
        for candidate in p.ranked():
            tokens = [t for t in candidate.tokens if t < self.vocab.eot]
            text = self._decode(tokens).strip()
            if text in seen:
                continue
            seen.add(text)
            self.nbest.append(Hypothesis(text, tokens, candidate.logprob))
            if len(self.nbest) == self.options.nbest:
                break

    def _split(self, best: Candidate, window: Window) -> tuple[list[Segment], int]:
        """Segments of one window's tokens and how far ``seek`` moves (transformers' rules)."""
        tokens, vocab = best.tokens, self.vocab
        offset = window.seek * FRAME_S
        ts = vocab.timestamp_begin
        if not self.timestamps:
            segment = self._segment(tokens, best.token_logprobs, offset, offset + window.frames * FRAME_S)
            return [segment], window.frames
        is_ts = [t >= ts for t in tokens]
        cuts = _cuts(tokens, ts)
        single_ending = is_ts[-2:] == [False, True]
        if not cuts:
            end = window.frames * FRAME_S
            stamps = [t for t in tokens if t >= ts]
            if stamps and stamps[-1] != ts:
                end = (stamps[-1] - ts) * TIME_PRECISION_S
            return [self._segment(tokens, best.token_logprobs, offset, offset + end)], window.frames
        if single_ending:
            cuts.append(len(tokens))
        else:
            cuts[-1] += 1
        segments, last = [], 0
        for k, cut in enumerate(cuts):
            piece = tokens[last:cut]
            end_index = -1 if k < len(cuts) - 1 or single_ending else -2
            start = offset + (piece[0] - ts) * TIME_PRECISION_S
            end = offset + (piece[end_index] - ts) * TIME_PRECISION_S
            segments.append(self._segment(piece, best.token_logprobs[last:cut], start, end))
            last = cut
        if single_ending:
            return segments, window.frames
        return segments, (tokens[last - 2] - ts) * INPUT_STRIDE

    def _segment(self, tokens: list[int], logprobs: list[float], start: float, end: float) -> Segment:
        text = self._decode([t for t in tokens if t < self.vocab.eot]).strip()
        return Segment(0, start, end, text, list(tokens), token_logprobs=list(logprobs[: len(tokens)]))

    def _finish(self) -> None:
        self.done = True
        self.pending = None
        self.checking = None
        if self.window is not None:
            self.window.encoder_out = None
        segments = self.segments
        for i, s in enumerate(segments):
            s.id, s.start, s.end = i, round(s.start, 2), round(s.end, 2)
            if s.words:
                for w in s.words:
                    w.start, w.end = min(w.start, round(self.duration, 2)), min(w.end, round(self.duration, 2))
        if segments:  # the last window's end is padded audio: clamp to the real duration
            segments[-1].end = min(segments[-1].end, round(self.duration, 2))
        text = " ".join(s.text for s in segments)
        self.result = Transcription(text, self.language or "en", self.duration, segments, self.nbest)


def _cuts(tokens: list[int], timestamp_begin: int) -> list[int]:
    """Where a window's tokens split into segments: after the first timestamp of each pair."""
    return [i + 1 for i in range(len(tokens) - 1) if tokens[i] >= timestamp_begin and tokens[i + 1] >= timestamp_begin]
