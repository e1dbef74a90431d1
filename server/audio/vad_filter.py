"""Drop long silences from a file before decoding, and map result times back to the original audio.

The rules and defaults follow faster-whisper's ``vad_filter`` (``faster_whisper/vad.py``, itself
adapted from Silero VAD's ``get_speech_timestamps``): frames of 512 samples get a speech probability;
speech starts at ``threshold``, ends after ``min_silence_duration_ms`` below ``neg_threshold``;
each kept stretch is padded by ``speech_pad_ms``; the stretches are joined end to end. Times in a
result decoded from the joined audio are moved back by the silence removed before them: a word's by
the stretch that holds its middle (as faster-whisper does); a segment without words runs over the
stretches it really spans (see ``FilteredAudio.restore``).

Pure numpy: the frame probabilities come from a function the caller passes (the server's Silero
runner, :func:`splitasr.audio.vad.silero_probabilities`), so this module needs no model.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import SAMPLE_RATE_HZ

__all__ = ["FRAME_SAMPLES", "FilteredAudio", "SpeechMap", "VadFilterOptions", "remove_silence", "speech_spans"]

FRAME_SAMPLES = 512  # 32 ms at 16 kHz: one Silero VAD decision
SEEK_FRAMES_PER_SECOND = 100  # a segment's ``seek`` counts Whisper's mel frames (10 ms)
# A stretch longer than max_speech_duration_s is cut at a silence of at least this long, if it has one.
_MIN_SILENCE_AT_MAX_SPEECH_MS = 98

Probabilities = Callable[[np.ndarray], np.ndarray]  # audio -> one speech probability per 512-sample frame


@dataclass(frozen=True)
class VadFilterOptions:
    """faster-whisper's ``VadOptions`` and defaults, in the same units."""

    threshold: float = 0.5  # a frame at or above this probability is speech
    neg_threshold: float | None = None  # below this, silence; None = max(threshold - 0.15, 0.01)
    min_speech_duration_ms: int = 0  # shorter speech stretches are dropped
    max_speech_duration_s: float = float("inf")  # longer ones are cut (at a short silence when there is one)
    min_silence_duration_ms: int = 2000  # silence shorter than this stays (it is a pause, not a gap)
    speech_pad_ms: int = 400  # kept on each side of a speech stretch

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {self.threshold}")
        if self.min_silence_duration_ms < 0 or self.speech_pad_ms < 0 or self.min_speech_duration_ms < 0:
            raise ValueError("durations must not be negative")


def speech_spans(probabilities: np.ndarray, num_samples: int, options: VadFilterOptions = VadFilterOptions(),
                 rate_hz: int = SAMPLE_RATE_HZ) -> list[tuple[int, int]]:
    """Speech stretches as ``(start, end)`` sample indices, padded, in order, never overlapping.

    ``probabilities``: one per frame of :data:`FRAME_SAMPLES` samples (the last frame zero-padded).
    """
    spans = _raw_spans(probabilities, num_samples, options, rate_hz)
    return _pad(spans, num_samples, rate_hz * options.speech_pad_ms / 1000)


def _raw_spans(probs: np.ndarray, num_samples: int, o: VadFilterOptions, rate_hz: int) -> list[list[int]]:
    # Silero's state machine as faster-whisper runs it; sample counts as floats, as there.
    window = FRAME_SAMPLES
    neg_threshold = o.neg_threshold if o.neg_threshold is not None else max(o.threshold - 0.15, 0.01)
    min_speech = rate_hz * o.min_speech_duration_ms / 1000
    pad = rate_hz * o.speech_pad_ms / 1000
    max_speech = rate_hz * o.max_speech_duration_s - window - 2 * pad
    min_silence = rate_hz * o.min_silence_duration_ms / 1000
    min_silence_at_max = rate_hz * _MIN_SILENCE_AT_MAX_SPEECH_MS / 1000
    spans: list[list[int]] = []
    start: int | None = None
    temp_end = prev_end = next_start = 0
    for i, p in enumerate(probs.tolist()):
        here = window * i
        if p >= o.threshold and temp_end:
            temp_end = 0
            if next_start < prev_end:
                next_start = here
        if p >= o.threshold and start is None:
            start = here
            continue
        if start is not None and here - start > max_speech:
            if prev_end:
                spans.append([start, prev_end])
                start = None if next_start < prev_end else next_start
            else:
                spans.append([start, here])
                start = None
            prev_end = next_start = temp_end = 0
            if start is None:
                continue
        if p < neg_threshold and start is not None:
            if not temp_end:
                temp_end = here
            if here - temp_end > min_silence_at_max:
                prev_end = temp_end
            if here - temp_end < min_silence:
                continue
            if temp_end - start > min_speech:
                spans.append([start, temp_end])
            start = None
            prev_end = next_start = temp_end = 0
    if start is not None and num_samples - start > min_speech:
        spans.append([start, num_samples])
    return spans


def _pad(spans: list[list[int]], num_samples: int, pad: float) -> list[tuple[int, int]]:
    """Pad each stretch by ``pad`` samples; a gap shorter than two pads is split between its neighbours."""
    for i, span in enumerate(spans):
        if i == 0:
            span[0] = int(max(0, span[0] - pad))
        if i + 1 < len(spans):
            gap = spans[i + 1][0] - span[1]
            if gap < 2 * pad:
                span[1] += int(gap // 2)
                spans[i + 1][0] = int(max(0, spans[i + 1][0] - gap // 2))
            else:
                span[1] = int(min(num_samples, span[1] + pad))
                spans[i + 1][0] = int(max(0, spans[i + 1][0] - pad))
        else:
            span[1] = int(min(num_samples, span[1] + pad))
    return [(s, e) for s, e in spans]


@dataclass(frozen=True)
class SpeechMap:
    """Maps a time in the joined speech back to the original audio (faster-whisper's SpeechTimestampsMap)."""

    spans: tuple[tuple[int, int], ...]
    rate_hz: int = SAMPLE_RATE_HZ
    _ends: list[int] = field(init=False, repr=False, compare=False)  # each span's end in the joined audio
    _silence_before: list[float] = field(init=False, repr=False, compare=False)  # seconds removed before it

    def __post_init__(self) -> None:
        ends, before, removed, previous_end = [], [], 0, 0
        for start, end in self.spans:
            removed += start - previous_end
            previous_end = end
            ends.append(end - removed)
            before.append(removed / self.rate_hz)
        object.__setattr__(self, "_ends", ends)
        object.__setattr__(self, "_silence_before", before)

    def span_index(self, seconds: float, is_end: bool = False) -> int:
        """Which kept stretch a joined-audio time falls in; an end exactly on a join stays in the earlier one."""
        sample = int(seconds * self.rate_hz)
        if is_end and sample in self._ends:
            return self._ends.index(sample)
        return min(bisect.bisect(self._ends, sample), len(self._ends) - 1)

    def original_time(self, seconds: float, is_end: bool = False, index: int | None = None) -> float:
        if not self.spans:
            return seconds
        index = self.span_index(seconds, is_end) if index is None else index
        return round(self._silence_before[index] + seconds, 2)

    def joined_bounds(self, index: int) -> tuple[float, float]:
        """Start and end (seconds) of kept stretch ``index`` in the joined audio."""
        start, end = self.spans[index]
        return (self._ends[index] - (end - start)) / self.rate_hz, self._ends[index] / self.rate_hz


@dataclass(frozen=True)
class FilteredAudio:
    """The speech of a file joined end to end, and how to put result times back on the original."""

    audio: np.ndarray
    original_seconds: float
    map: SpeechMap

    @property
    def removed_seconds(self) -> float:
        return self.original_seconds - len(self.audio) / self.map.rate_hz

    def restore(self, result):
        """Move a result's segment (and word) times back onto the original audio, in place; returns it.

        ``result`` has ``duration`` and ``segments``, each with ``start``/``end`` and optionally
        ``words`` with ``start``/``end`` and ``seek`` (the engine's ``Transcription``).
        """
        for segment in result.segments:
            words = getattr(segment, "words", None) or []
            for word in words:  # a word's two ends belong to the stretch that holds its middle
                index = self.map.span_index((word.start + word.end) / 2)
                word.start = self.map.original_time(word.start, index=index)
                word.end = self.map.original_time(word.end, index=index)
            if words:
                segment.start, segment.end = words[0].start, words[-1].end
            elif self.map.spans:
                segment.start, segment.end = self._segment_times(segment.start, segment.end)
            if getattr(segment, "seek", None) is not None:  # where its window starts, in mel frames of 10 ms
                segment.seek = round(self.map.original_time(segment.seek / SEEK_FRAMES_PER_SECOND)
                                     * SEEK_FRAMES_PER_SECOND)
        result.duration = self.original_seconds
        return result

    def _segment_times(self, start: float, end: float) -> tuple[float, float]:
        # Whisper's segment edges are coarse, and a segment often starts where the previous one ended,
        # which can lie in an earlier stretch: mapped there (as faster-whisper maps segment edges), the
        # segment would begin before a removed gap of any length. So a segment keeps only the stretches
        # it really spans, those that hold at least half of it or that it covers at least half of, and
        # runs from the first of them to the last (clamped to them). One stretch: its own times.
        overlaps = []
        first_index, last_index = self.map.span_index(start), self.map.span_index(end, is_end=True)
        for index in range(min(first_index, last_index), max(first_index, last_index) + 1):
            low, high = self.map.joined_bounds(index)
            overlaps.append((index, low, high, max(0.0, min(end, high) - max(start, low))))
        length = max(end - start, 1e-9)
        kept = [o for o in overlaps if o[3] >= 0.5 * length or o[3] >= 0.5 * (o[2] - o[1])]
        kept = kept or [max(overlaps, key=lambda o: o[3])]
        (first, low, _, _), (last, _, high, _) = kept[0], kept[-1]
        return (self.map.original_time(min(max(start, low), high), index=first),
                self.map.original_time(min(max(end, low), high), index=last))


def remove_silence(audio: np.ndarray, probabilities: Probabilities,
                   options: VadFilterOptions = VadFilterOptions(), rate_hz: int = SAMPLE_RATE_HZ) -> FilteredAudio:
    """Keep only the speech of ``audio`` (16 kHz mono float32); empty when there is none."""
    spans = speech_spans(probabilities(audio), len(audio), options, rate_hz)
    kept = np.concatenate([audio[s:e] for s, e in spans]) if spans else audio[:0]
    return FilteredAudio(kept, len(audio) / rate_hz, SpeechMap(tuple(spans), rate_hz))
