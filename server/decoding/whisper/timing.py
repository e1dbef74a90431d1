"""Word timestamps: dynamic time warping over the cross-attention of Whisper's alignment heads.

This is openai/whisper's ``timing.py`` method (MIT licence), on our runner: one teacher-forced pass
over ``[sot sequence, <|notimestamps|>, text tokens, <|endoftext|>]`` with the window's encoder output
(and the row's adapter) gives the alignment heads' attention over the audio frames; each head's
weights are normalised per frame, median-filtered and averaged; DTW finds the monotonic path from
tokens to frames; a word starts where the path first reaches its first token. The same heuristics
follow: punctuation merges into the neighbouring word, and words at sentence or segment edges are kept
from stretching beyond twice the median word length.

The DTW is vectorised over anti-diagonals with numpy (openai/whisper compiles a double loop with
numba; this keeps numba out of the server's dependencies at the same result, ties broken alike).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..types import Segment, Word

TOKENS_PER_SECOND = 50  # encoder positions per second
MEDIAN_FILTER_WIDTH = 7
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
SENTENCE_END_MARKS = ".。!！?？"
UNICODE_SPLIT_LANGUAGES = {"zh", "ja", "th", "lo", "my", "yue"}


@dataclass
class WordTiming:
    word: str
    tokens: list[int] = field(default_factory=list)
    start: float = 0.0
    end: float = 0.0
    probability: float = 0.0


def median_filter(x: torch.Tensor, width: int) -> torch.Tensor:
    """Median over a sliding window of odd ``width`` along the last axis (reflect padding)."""
    pad = width // 2
    if x.shape[-1] <= pad:
        return x
    flat = x.reshape(-1, x.shape[-2], x.shape[-1]) if x.ndim >= 3 else x.reshape(1, -1, x.shape[-1])
    padded = F.pad(flat, (pad, pad, 0, 0), mode="reflect")
    return padded.unfold(-1, width, 1).sort()[0][..., pad].reshape(x.shape)


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimal-cost monotonic path through ``cost`` [N, M]; returns (row indices, column indices)."""
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    trace = np.full((n + 1, m + 1), -1, dtype=np.int8)
    for d in range(2, n + m + 1):  # cells (i, j) with i + j = d, 1 <= i <= n, 1 <= j <= m
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)
        j = d - i
        c0, c1, c2 = acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]
        t = np.where((c0 < c1) & (c0 < c2), 0, np.where((c1 < c0) & (c1 < c2), 1, 2))
        acc[i, j] = cost[i - 1, j - 1] + np.choose(t, (c0, c1, c2))
        trace[i, j] = t
    trace[0, :] = 2
    trace[:, 0] = 1
    i, j, path = n, m, []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        step = trace[i, j]
        if step == 0:
            i, j = i - 1, j - 1
        elif step == 1:
            i -= 1
        else:
            j -= 1
    result = np.array(path[::-1]).T
    return result[0], result[1]


def split_words(tokens: list[int], decode, eot: int, language: str) -> tuple[list[str], list[list[int]]]:
    """Group text tokens into words (spaces; characters for languages written without them)."""
    words, word_tokens, current, start = [], [], [], 0
    text_so_far = decode(tokens)
    for t in tokens:  # first by Unicode: a multi-byte character may span tokens
        current.append(t)
        piece = decode(current)
        if "\ufffd" not in piece or text_so_far[start + piece.index("\ufffd")] == "\ufffd":
            words.append(piece)
            word_tokens.append(current)
            current, start = [], start + len(piece)
    if language in UNICODE_SPLIT_LANGUAGES:
        return words, word_tokens
    merged, merged_tokens = [], []
    for word, toks in zip(words, word_tokens):
        special = toks[0] >= eot
        with_space = word.startswith(" ")
        punctuation = word.strip() in string.punctuation  # a substring test, as openai/whisper's
        if special or with_space or punctuation or not merged:
            merged.append(word)
            merged_tokens.append(list(toks))
        else:
            merged[-1] += word
            merged_tokens[-1].extend(toks)
    return merged, merged_tokens


def find_alignment(scores: torch.Tensor, logits: torch.Tensor, text_tokens: list[int], num_frames: int,
                   sot_length: int, decode, eot: int, language: str) -> list[WordTiming]:
    """Words of ``text_tokens`` with times (seconds into the window) from one teacher-forced pass.

    ``scores`` [heads, T, S]: alignment heads' cross-attention scores over the sequence
    ``[sot sequence (sot_length tokens), <|notimestamps|>, text, eot]``; ``logits`` [T, V] of that pass.
    """
    if not text_tokens:
        return []
    sampled = logits[sot_length: sot_length + len(text_tokens) + 1, :eot].softmax(-1)
    probs = sampled[torch.arange(len(text_tokens)), torch.tensor(text_tokens)].tolist()
    weights = scores[:, :, : max(1, num_frames // 2)].softmax(-1)
    std, mean = torch.std_mean(weights, dim=-2, keepdim=True, unbiased=False)
    weights = median_filter((weights - mean) / std, MEDIAN_FILTER_WIDTH)
    matrix = weights.mean(0)[sot_length:-1]
    text_index, time_index = dtw(-matrix.double().cpu().numpy())
    words, word_tokens = split_words(text_tokens + [eot], decode, eot, language)
    if len(word_tokens) <= 1:
        return []
    boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(text_index), (1, 0), constant_values=1).astype(bool)
    jump_times = time_index[jumps] / TOKENS_PER_SECOND
    starts, ends = jump_times[boundaries[:-1]], jump_times[boundaries[1:]]
    return [WordTiming(w, t, float(s), float(e), float(np.mean(probs[i:j])))
            for w, t, s, e, i, j in zip(words, word_tokens, starts, ends, boundaries[:-1], boundaries[1:])]


def merge_punctuations(alignment: list[WordTiming]) -> None:
    i, j = len(alignment) - 2, len(alignment) - 1
    while i >= 0:
        previous, following = alignment[i], alignment[j]
        if previous.word.startswith(" ") and previous.word.strip() in PREPEND_PUNCTUATIONS:
            following.word = previous.word + following.word
            following.tokens = previous.tokens + following.tokens
            previous.word, previous.tokens = "", []
        else:
            j = i
        i -= 1
    i, j = 0, 1
    while j < len(alignment):
        previous, following = alignment[i], alignment[j]
        if not previous.word.endswith(" ") and following.word in APPEND_PUNCTUATIONS:
            previous.word += following.word
            previous.tokens = previous.tokens + following.tokens
            following.word, following.tokens = "", []
        else:
            i = j
        j += 1


def add_word_timestamps(segments: list[Segment], alignment: list[WordTiming], time_offset: float,
                        last_speech: float, eot: int) -> float:
    """Give each of one window's ``segments`` its words; returns the end of the last speech."""
    durations = np.array([t.end - t.start for t in alignment])
    durations = durations[durations.nonzero()]
    median = min(0.7, float(np.median(durations))) if len(durations) else 0.0
    longest = median * 2
    if len(durations):  # words at sentence boundaries: no longer than twice the median
        for i in range(1, len(alignment)):
            if alignment[i].end - alignment[i].start > longest:
                if alignment[i].word in SENTENCE_END_MARKS:
                    alignment[i].end = alignment[i].start + longest
                elif alignment[i - 1].word in SENTENCE_END_MARKS:
                    alignment[i].start = alignment[i].end - longest
    merge_punctuations(alignment)
    index = 0
    for segment in segments:
        text_tokens = [t for t in segment.tokens if t < eot]
        saved, words = 0, []
        while index < len(alignment) and saved < len(text_tokens):
            timing = alignment[index]
            if timing.word:
                words.append(Word(timing.word, round(time_offset + timing.start, 2),
                                  round(time_offset + timing.end, 2), round(timing.probability, 4)))
            saved += len(timing.tokens)
            index += 1
        if words:
            _clamp_edges(segment, words, median, longest, last_speech)
            last_speech = segment.end
        segment.words = words
    return last_speech


def _clamp_edges(segment: Segment, words: list[Word], median: float, longest: float, last_speech: float) -> None:
    """openai/whisper's segment-edge heuristics (a long first word after a pause, long edge words)."""
    if words[0].end - last_speech > median * 4 and (
        words[0].end - words[0].start > longest or (len(words) > 1 and words[1].end - words[0].start > longest * 2)
    ):
        if len(words) > 1 and words[1].end - words[1].start > longest:
            boundary = max(words[1].end / 2, words[1].end - longest)
            words[0].end = words[1].start = boundary
        words[0].start = max(0.0, words[0].end - longest)
    if segment.start < words[0].end and segment.start - 0.5 > words[0].start:
        words[0].start = max(0.0, min(words[0].end - median, segment.start))
    else:
        segment.start = words[0].start
    if segment.end > words[-1].start and segment.end + 0.5 < words[-1].end:
        words[-1].end = max(words[-1].start + median, segment.end)
    else:
        segment.end = words[-1].end
