"""Plain result types the client returns (so callers never handle protobuf messages)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ._proto import adapters_pb2, recognizer_pb2


@dataclass(frozen=True)
class Word:
    word: str
    start: float  # seconds
    end: float


@dataclass(frozen=True)
class Segment:
    text: str
    start: float
    end: float
    words: list[Word] = field(default_factory=list)


@dataclass(frozen=True)
class Transcript:
    """A ``Recognize`` result."""

    text: str
    language: str
    duration: float
    segments: list[Segment]


@dataclass(frozen=True)
class StreamUpdate:
    """One ``StreamingRecognize`` response: an interim hypothesis or the final text of an utterance."""

    text: str  # the whole hypothesis (final: the utterance's transcript)
    stable: str  # interim: the prefix that consecutive hypotheses agree on; final: == text
    is_final: bool
    utterance: int  # 0, 1, 2 ... within the stream
    start: float  # stream time (seconds) where the utterance starts
    end: float  # stream time up to which audio is covered
    words: list[Word] = field(default_factory=list)
    end_of_utterance: bool = False


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    sha256: str
    kind: str
    size: int
    created_at: float


@dataclass(frozen=True)
class EnrollResult:
    sha256: str
    name: str
    uploaded_bytes: int  # adapter bytes sent by this call (0 when the server already had the file)


@dataclass(frozen=True)
class ServerStatus:
    server: str
    health: str  # SERVING, NOT_SERVING, ...
    adapter_sha256: str | None = None  # the configured adapter file's hash
    enrolled_as: AdapterInfo | None = None  # the server's record for it, if enrolled


def _words(items) -> list[Word]:
    return [Word(w.word, w.start_seconds, w.end_seconds) for w in items]


def adapter_info(msg: adapters_pb2.AdapterInfo) -> AdapterInfo:
    return AdapterInfo(msg.name, msg.sha256, msg.kind, msg.size, msg.created_at)


def transcript(msg: recognizer_pb2.RecognizeResponse) -> Transcript:
    segments = [Segment(s.text, s.start_seconds, s.end_seconds, _words(s.words)) for s in msg.segments]
    return Transcript(msg.text, msg.language, msg.duration_seconds, segments)


def stream_update(msg: recognizer_pb2.StreamingRecognizeResponse) -> StreamUpdate | None:
    """Interim responses carry a stable and an unstable part; they are joined into one update."""
    if not msg.results:
        return None
    first = msg.results[0]
    eou = msg.speech_event_type == recognizer_pb2.StreamingRecognizeResponse.END_OF_UTTERANCE
    if first.is_final:
        return StreamUpdate(first.transcript, first.transcript, True, first.utterance, first.start_seconds,
                            first.result_end_seconds, _words(first.words), eou)
    stable = " ".join(r.transcript for r in msg.results if r.stability >= 0.5)
    text = " ".join(r.transcript for r in msg.results if r.transcript)
    last = msg.results[-1]
    return StreamUpdate(text, stable, False, first.utterance, first.start_seconds, last.result_end_seconds,
                        end_of_utterance=eou)
