"""Conversions between protobuf messages and the engine's types (no logic beyond that)."""

from __future__ import annotations

from splitasr_device._proto import adapters_pb2
from splitasr_device._proto import recognizer_pb2 as pb

from ...decoding import Segment, Transcription
from ...engine.store import AdapterRecord
from ...engine.streaming import STABLE, UNSTABLE, Final, Interim

_EOU = pb.StreamingRecognizeResponse.END_OF_UTTERANCE


def adapter_info(record: AdapterRecord) -> adapters_pb2.AdapterInfo:
    return adapters_pb2.AdapterInfo(name=record.name, sha256=record.sha256, kind=record.kind,
                                    size=record.size, created_at=record.created_at)


def words(segment: Segment, offset: float = 0.0) -> list[pb.WordInfo]:
    """The segment's words with their aligned times; without alignment (a CTC backbone, or an interim),
    the segment's span spread over its words by character count."""
    if segment.words:
        return [pb.WordInfo(word=w.word.strip(), start_seconds=round(offset + w.start, 3),
                            end_seconds=round(offset + w.end, 3)) for w in segment.words]
    tokens = segment.text.split()
    total = sum(len(w) for w in tokens) or 1
    span = max(0.0, segment.end - segment.start)
    out, t = [], segment.start
    for w in tokens:
        end = t + span * len(w) / total
        out.append(pb.WordInfo(word=w, start_seconds=round(offset + t, 3), end_seconds=round(offset + end, 3)))
        t = end
    return out


def segments(result: Transcription, offset: float = 0.0) -> list[pb.SpeechSegment]:
    return [pb.SpeechSegment(text=s.text, start_seconds=offset + s.start, end_seconds=offset + s.end,
                             words=words(s, offset)) for s in result.segments]


def recognize_response(result: Transcription) -> pb.RecognizeResponse:
    return pb.RecognizeResponse(text=result.text, language=result.language, duration_seconds=result.duration,
                                segments=segments(result))


def stream_response(event: Interim | Final, offset: float) -> pb.StreamingRecognizeResponse:
    """``offset``: the client's ``time_offset_seconds`` (audio finalised before a reconnect)."""
    start, end = offset + event.start_s, offset + event.end_s
    if isinstance(event, Final):
        result = pb.StreamingRecognitionResult(
            transcript=event.result.text, stability=1.0, is_final=True, start_seconds=start,
            result_end_seconds=end, utterance=event.utterance,
            words=[w for s in event.result.segments for w in words(s, start)])
        return pb.StreamingRecognizeResponse(results=[result], speech_event_type=_EOU)
    parts = [(event.stable, STABLE), (event.unstable, UNSTABLE)]
    return pb.StreamingRecognizeResponse(results=[
        pb.StreamingRecognitionResult(transcript=text, stability=stability, start_seconds=start,
                                      result_end_seconds=end, utterance=event.utterance)
        for text, stability in parts if text])
