"""The VAD filter: the same speech stretches and time map as faster-whisper's, on real Silero output."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import pytest

from splitasr.audio import SAMPLE_RATE_HZ, decode_audio
from splitasr.audio.vad import SileroVad, silero_probabilities
from splitasr.audio.vad_filter import (
    FRAME_SAMPLES,
    FilteredAudio,
    SpeechMap,
    VadFilterOptions,
    remove_silence,
    speech_spans,
)

fw_vad = pytest.importorskip("faster_whisper.vad")

OPTION_CASES = [
    VadFilterOptions(),
    VadFilterOptions(min_silence_duration_ms=300, speech_pad_ms=100),
    VadFilterOptions(threshold=0.3, neg_threshold=0.2, min_speech_duration_ms=250),
    VadFilterOptions(max_speech_duration_s=3.0, min_silence_duration_ms=500),
    VadFilterOptions(max_speech_duration_s=1.5, speech_pad_ms=0, min_silence_duration_ms=100),
]


def random_probabilities(seed: int, frames: int = 1500) -> np.ndarray:
    """Runs of speech and silence with noisy edges, like Silero's output."""
    rng = np.random.default_rng(seed)
    probs, speech = [], bool(seed % 2)
    while len(probs) < frames:
        run = int(rng.integers(1, 200))
        base = 0.85 if speech else 0.08
        probs += list(np.clip(base + rng.normal(0, 0.2, run), 0, 1))
        speech = not speech
    return np.array(probs[:frames], dtype=np.float32)


def faster_whisper_spans(monkeypatch, probs: np.ndarray, num_samples: int, options: VadFilterOptions):
    monkeypatch.setattr(fw_vad, "get_vad_model", lambda: (lambda audio: probs))
    fw_options = fw_vad.VadOptions(**{k: getattr(options, k) for k in vars(fw_vad.VadOptions())})
    return [(s["start"], s["end"]) for s in fw_vad.get_speech_timestamps(np.zeros(num_samples, np.float32), fw_options)]


@pytest.mark.parametrize("options", OPTION_CASES)
@pytest.mark.parametrize("seed", range(8))
def test_speech_spans_match_faster_whisper(monkeypatch, options, seed):
    probs = random_probabilities(seed)
    num_samples = len(probs) * FRAME_SAMPLES - int(np.random.default_rng(seed).integers(0, FRAME_SAMPLES))
    ours = speech_spans(probs, num_samples, options)
    assert ours == faster_whisper_spans(monkeypatch, probs, num_samples, options)
    assert all(0 <= s < e <= num_samples for s, e in ours)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(ours)), "stretches never overlap"


def test_time_map_matches_faster_whisper():
    rng = np.random.default_rng(0)
    spans = [(8000, 40000), (100000, 150000), (150000, 151000), (400000, 480000)]
    ours = SpeechMap(tuple(spans))
    theirs = fw_vad.SpeechTimestampsMap([{"start": s, "end": e} for s, e in spans], SAMPLE_RATE_HZ)
    kept = sum(e - s for s, e in spans) / SAMPLE_RATE_HZ
    joins = np.cumsum([e - s for s, e in spans]) / SAMPLE_RATE_HZ
    for t in [*rng.uniform(0, kept, 300), *joins, 0.0]:
        for is_end in (False, True):
            assert ours.original_time(float(t), is_end) == theirs.get_original_time(float(t), is_end=is_end)


@dataclass
class _Word:
    start: float
    end: float


@dataclass
class _Segment:
    start: float
    end: float
    words: list = field(default_factory=list)
    seek: int = 0


@dataclass
class _Result:
    duration: float
    segments: list


@pytest.fixture(scope="module")
def speech_with_gaps(real_speech) -> tuple[np.ndarray, list[float]]:
    """Every real utterance, each followed by 6 s of silence; returns the audio and each start (s)."""
    parts, starts, t = [], [], 0.0
    for row in real_speech:
        audio = decode_audio(row["path"])
        starts.append(t)
        parts += [audio, np.zeros(6 * SAMPLE_RATE_HZ, np.float32)]
        t += len(audio) / SAMPLE_RATE_HZ + 6
    return np.concatenate(parts), starts


def test_silence_is_removed_and_times_map_back(speech_with_gaps):
    audio, starts = speech_with_gaps
    filtered = remove_silence(audio, silero_probabilities)
    assert len(filtered.map.spans) == len(starts)
    assert filtered.removed_seconds > 0.7 * 6 * len(starts), "most of each 6 s gap goes"
    joined_starts = [sum(e - s for s, e in filtered.map.spans[:i]) / SAMPLE_RATE_HZ for i in range(len(starts))]
    result = _Result(len(filtered.audio) / SAMPLE_RATE_HZ,
                     [_Segment(t + 0.5, t + 1.0) for t in joined_starts[:-1]]
                     + [_Segment(0, 0, [_Word(joined_starts[-1] + 0.5, joined_starts[-1] + 0.7)])])
    filtered.restore(result)
    assert result.duration == pytest.approx(len(audio) / SAMPLE_RATE_HZ)
    for segment, start in zip(result.segments, starts):
        # each utterance starts within the 400 ms pad of its original position
        assert start + 0.1 <= segment.start <= start + 0.9, (segment.start, start)
    assert result.segments[-1].words[0].start == result.segments[-1].start


def test_all_silence_leaves_nothing():
    filtered = remove_silence(np.zeros(20 * SAMPLE_RATE_HZ, np.float32), silero_probabilities)
    assert len(filtered.audio) == 0 and filtered.removed_seconds == pytest.approx(20.0)


def test_side_by_side_lanes_agree_with_one_stream(speech_with_gaps):
    audio, _ = speech_with_gaps  # ~110 s: decoded as several lanes
    laned = silero_probabilities(audio)
    vad, frames = SileroVad(), np.zeros(len(laned) * FRAME_SAMPLES, np.float32)
    frames[: len(audio)] = audio
    single = np.array([vad(frames[i: i + FRAME_SAMPLES]) for i in range(0, len(frames), FRAME_SAMPLES)])
    assert np.abs(laned - single).mean() < 5e-3
    ours, theirs = speech_spans(laned, len(audio)), speech_spans(single, len(audio))
    assert len(ours) == len(theirs)
    assert max(abs(a - b) for x, y in zip(ours, theirs) for a, b in zip(x, y)) <= 2 * FRAME_SAMPLES


def test_a_segment_reaching_back_across_a_gap_is_placed_with_its_speech():
    spans = ((0, 3 * SAMPLE_RATE_HZ), (60 * SAMPLE_RATE_HZ, 64 * SAMPLE_RATE_HZ))
    filtered = FilteredAudio(np.zeros(7 * SAMPLE_RATE_HZ, np.float32), 70.0, SpeechMap(spans))
    # Whisper often starts a segment where the previous one ended: here 0.5 s before the join at 3 s
    result = _Result(7.0, [_Segment(0.2, 2.5), _Segment(2.5, 5.5), _Segment(6.0, 6.9, seek=500)])
    filtered.restore(result)
    assert [(s.start, s.end) for s in result.segments] == [(0.2, 2.5), (60.0, 62.5), (63.0, 63.9)]
    assert [s.seek for s in result.segments] == [0, 0, 6200]  # a window starting 5 s in: 62 s in the file


def test_a_segment_over_several_stretches_spans_them_all():
    spans = ((0, 3 * SAMPLE_RATE_HZ), (60 * SAMPLE_RATE_HZ, 64 * SAMPLE_RATE_HZ),
             (100 * SAMPLE_RATE_HZ, 102 * SAMPLE_RATE_HZ))
    filtered = FilteredAudio(np.zeros(9 * SAMPLE_RATE_HZ, np.float32), 110.0, SpeechMap(spans))
    # one segment for the whole audio (a rescored result, a CTC piece), and one mostly in the middle stretch
    result = _Result(9.0, [_Segment(0.0, 9.0), _Segment(2.9, 6.5), _Segment(3.0, 3.0)])
    filtered.restore(result)
    assert [(s.start, s.end) for s in result.segments] == [(0.0, 102.0), (60.0, 63.5), (3.0, 3.0)]
