"""What a decode is asked for and what it returns: plain dataclasses, no torch.

Transports, output formats and the command line import only this module, so they never load the
decoder. The option bundle follows openai/whisper's ``DecodingOptions`` (one frozen dataclass, a
comment per field); the thresholds are Whisper's defaults.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from ..errors import InvalidInput

MAX_BEAM_SIZE = 16
MAX_NBEST = 16
MAX_BEST_OF = 16
TASKS = ("transcribe", "translate")
# Whisper's temperature ladder: a window that fails the thresholds is decoded again, sampling hotter.
FALLBACK_TEMPERATURES = (0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass(frozen=True)
class DecodingOptions:
    beam_size: int = 1  # 1 = greedy
    language: str | None = None  # None: detect on multilingual backbones, English on .en ones
    task: str = "transcribe"  # or "translate" (to English; multilingual backbones only)
    temperature: float = 0.0  # > 0 samples (no fallback); 0 searches and falls back when a window fails
    best_of: int = 5  # samples drawn per window when sampling; the most likely one is kept
    prompt: str | None = None  # text that conditions every window (vocabulary, spelling)
    prefix: str | None = None  # text the first window's transcript is forced to start with
    nbest: int = 1  # > 1 also returns the k best distinct hypotheses (audio up to 30 s, no timestamps)
    max_new_tokens: int | None = None  # per 30 s window; None = half the decoder context (224)
    without_timestamps: bool = False  # no timestamp tokens: one segment per window
    word_timestamps: bool = False  # word start/end times by cross-attention alignment
    logprobs: bool = False  # the log-probability of every text token in the result (OpenAI's include[])
    length_penalty: float | None = None  # beam ranking: None = length normalised; else Google NMT's alpha
    # A window is decoded again at the next temperature when its text compresses better than this
    # (zlib; a repetition loop such as "play, play, play, …") or its average token log-probability
    # is below ``logprob_threshold``. None turns each check off.
    compression_ratio_threshold: float | None = 2.4
    logprob_threshold: float | None = -1.0
    # A window whose <|nospeech|> probability is above this (and whose log-probability is low) is silence.
    no_speech_threshold: float | None = 0.6
    # Mel frames the encoder reads for audio up to 30 s: None = the whole 30 s window. A shorter
    # window (whisper.cpp's audio_ctx) is faster on short clips; see the README before using it.
    audio_ctx_seconds: float | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.beam_size <= MAX_BEAM_SIZE:
            raise InvalidInput(f"beam_size must be between 1 and {MAX_BEAM_SIZE}, got {self.beam_size}")
        if not 1 <= self.nbest <= MAX_NBEST:
            raise InvalidInput(f"nbest must be between 1 and {MAX_NBEST}, got {self.nbest}")
        if not 1 <= self.best_of <= MAX_BEST_OF:
            raise InvalidInput(f"best_of must be between 1 and {MAX_BEST_OF}, got {self.best_of}")
        if not 0.0 <= self.temperature <= 1.0:
            raise InvalidInput(f"temperature must be between 0 and 1, got {self.temperature}")
        if self.task not in TASKS:
            raise InvalidInput(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise InvalidInput(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.audio_ctx_seconds is not None and not 1.0 <= self.audio_ctx_seconds <= 30.0:
            raise InvalidInput(f"audio_ctx_seconds must be between 1 and 30, got {self.audio_ctx_seconds}")


@dataclass
class Word:
    word: str  # with its leading space, as Whisper's tokens spell it
    start: float  # seconds
    end: float
    probability: float  # mean probability of its tokens


@dataclass
class Segment:
    id: int
    start: float  # seconds
    end: float
    text: str
    tokens: list[int]  # text and timestamp tokens
    seek: int = 0  # mel frame (10 ms) where the segment's 30 s window starts
    temperature: float = 0.0  # the temperature the window was finally decoded at
    avg_logprob: float = 0.0  # of the window's tokens
    compression_ratio: float = 0.0  # of the window's text
    no_speech_prob: float = 0.0  # of the window
    words: list[Word] | None = None  # with word_timestamps
    token_logprobs: list[float] = field(default_factory=list)  # one per token of ``tokens``


@dataclass
class TokenLogprob:
    token: str  # the token's text (may be part of a multi-byte character)
    logprob: float
    bytes: list[int]  # the token's UTF-8 bytes


@dataclass
class Hypothesis:
    text: str
    tokens: list[int]  # text tokens (no end of text)
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
    logprobs: list[TokenLogprob] | None = None  # with ``DecodingOptions.logprobs``


def compression_ratio(text: str) -> float:
    """Length of the UTF-8 text over its zlib-compressed length (high for repetition loops)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0
