"""Conversions between protobuf messages and the engine's types (no logic beyond that)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from splitasr_device._proto import adapters_pb2, trainer_pb2
from splitasr_device._proto import recognizer_pb2 as pb

from ...decoding import Segment, Transcription
from ...engine.streaming import Final, Interim, SpeechEvent, StreamPolicy
from ...jobs import JobParameters
from ...storage.store import AdapterRecord

_EOU = pb.StreamingRecognizeResponse.END_OF_UTTERANCE
_BEGIN = pb.StreamingRecognizeResponse.SPEECH_ACTIVITY_BEGIN
_END = pb.StreamingRecognizeResponse.SPEECH_ACTIVITY_END


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


def stream_policy(base: StreamPolicy, endpointing: pb.EndpointingConfig) -> StreamPolicy:
    """The server's policy with the stream's (checked) endpointing fields in place of its defaults."""
    given = {}
    if endpointing.HasField("silence_ms"):
        given["endpoint_silence_s"] = endpointing.silence_ms / 1000
    if endpointing.HasField("speech_threshold"):
        given["speech_threshold"] = endpointing.speech_threshold
    if endpointing.HasField("max_utterance_seconds"):
        given["max_utterance_s"] = endpointing.max_utterance_seconds
    return replace(base, **given)


def stream_response(event: Interim | Final | SpeechEvent, offset: float) -> pb.StreamingRecognizeResponse:
    """``offset``: the client's ``time_offset_seconds`` (audio finalised before a reconnect)."""
    if isinstance(event, SpeechEvent):
        return pb.StreamingRecognizeResponse(speech_event_type=_BEGIN if event.started else _END,
                                             speech_event_seconds=round(offset + event.at_s, 3),
                                             utterance=event.utterance)
    start, end = offset + event.start_s, offset + event.end_s
    if isinstance(event, Final):
        result = pb.StreamingRecognitionResult(
            transcript=event.result.text, stability=1.0, is_final=True, start_seconds=start,
            result_end_seconds=end, utterance=event.utterance,
            words=[w for s in event.result.segments for w in words(s, start)])
        return pb.StreamingRecognizeResponse(results=[result], speech_event_type=_EOU)
    parts = [(event.stable, event.stable_stability), (event.unstable, event.unstable_stability)]
    return pb.StreamingRecognizeResponse(results=[
        pb.StreamingRecognitionResult(transcript=text, stability=stability, start_seconds=start,
                                      result_end_seconds=end, utterance=event.utterance)
        for text, stability in parts if text])


# training jobs -----------------------------------------------------------------------------------
def job_parameters(msg: trainer_pb2.JobParameters) -> JobParameters:
    """Proto parameters to the job's; an unset (zero) field takes the default."""
    given: dict[str, Any] = {}
    for field in ("kind", "targets", "gate"):
        if getattr(msg, field):
            given[field] = getattr(msg, field)
    for field in ("rank", "experts", "epochs", "batch_size"):
        if getattr(msg, field):
            given[field] = getattr(msg, field)
    for field in ("alpha", "learning_rate", "seed", "dev"):
        if msg.HasField(field):
            given[field] = getattr(msg, field)
    return JobParameters(**given)


def _parameters_message(params: dict[str, Any]) -> trainer_pb2.JobParameters:
    return trainer_pb2.JobParameters(
        kind=params["kind"], rank=params["rank"], alpha=params["alpha"], targets=params["targets"],
        gate=params["gate"] or "", experts=params["experts"] or 0, epochs=params["epochs"],
        batch_size=params["batch_size"], learning_rate=params["learning_rate"], seed=params["seed"],
        dev=params["dev"])


def training_job(view: dict[str, Any]) -> trainer_pb2.TrainingJob:
    """A job's API view (``splitasr.jobs.views.job_view``) as a TrainingJob message."""
    progress, metrics, data = view["progress"], view["metrics"], view["training_data"]
    job = trainer_pb2.TrainingJob(
        id=view["id"], status=trainer_pb2.JobStatus.Value(view["status"].upper()),
        created_at=view["created_at"] or 0, started_at=view["started_at"] or 0,
        finished_at=view["finished_at"] or 0, name=view["name"] or "", store=view["store"],
        parameters=_parameters_message(view["hyperparameters"]), utterances=data["utterances"],
        audio_seconds=data["audio_seconds"], train_utterances=data["train_utterances"],
        dev_utterances=data["dev_utterances"],
        progress=trainer_pb2.JobProgress(**{k: progress[k] for k in ("stage", "epoch", "epochs", "step", "steps",
                                                                        "fraction") if k in progress}),
        metrics=trainer_pb2.JobMetrics(**{k: metrics[k] for k in ("dev_metric", "dev_before", "dev_after",
                                                                     "best_epoch", "epochs_run", "wall_seconds",
                                                                     "peak_rss_bytes") if metrics.get(k) is not None}))
    if view["result"]:
        result = view["result"]
        job.result.CopyFrom(trainer_pb2.JobResult(name=result["name"] or "", sha256=result["sha256"],
                                                  size=result["bytes"], kind=result["kind"], stored=result["stored"]))
    if view["error"]:
        job.error.CopyFrom(trainer_pb2.JobError(code=view["error"]["code"], message=view["error"]["message"]))
    return job


def job_event(event: dict[str, Any], view: dict[str, Any]) -> trainer_pb2.JobEvent:
    return trainer_pb2.JobEvent(id=event["id"], created_at=event["created_at"], type=event["type"],
                                level=event["level"], message=event["message"], job=training_job(view),
                                status=trainer_pb2.JobStatus.Value(event["status"].upper()),
                                fraction=event["fraction"])
