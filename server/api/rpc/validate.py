"""Request fields that cannot apply are INVALID_ARGUMENT naming the field, never silently dropped.

That covers fields this server's version of the contract does not know (a newer client's: protobuf
keeps them as unknown fields) and known fields that do not apply to the call they came in.
"""

from __future__ import annotations

from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

from splitasr_device._proto import recognizer_pb2 as pb

from ...engine.engine import NO_RESCORER
from ...errors import InvalidInput, UnsupportedField


def reject_unknown_fields(message: Message, path: str = "") -> None:
    """Raise for any field of ``message`` (or of a message field set in it) this server does not know."""
    unknown = UnknownFieldSet(message)
    if len(unknown):
        numbers = sorted({field.field_number for field in unknown})
        where = f" in {path}" if path else ""
        raise UnsupportedField(
            f"unknown field number(s) {', '.join(map(str, numbers))}{where} of {message.DESCRIPTOR.full_name}: "
            "this server does not implement them (the client's protos are newer than the server's)",
            param=path or message.DESCRIPTOR.name)
    for descriptor, value in message.ListFields():
        if descriptor.message_type is None:
            continue
        name = f"{path}.{descriptor.name}" if path else descriptor.name
        for item in value if descriptor.is_repeated else [value]:
            if isinstance(item, Message):
                reject_unknown_fields(item, name)


def check_recognize_config(config: pb.RecognitionConfig) -> None:
    """What does not apply to ``Recognize`` (a whole file or a LINEAR16 buffer)."""
    if config.sample_rate_hz and config.encoding != pb.LINEAR16:
        raise UnsupportedField("sample_rate_hz applies to LINEAR16 audio only: an encoded file carries its own "
                               "rate. Leave it 0, or send encoding LINEAR16", param="config.sample_rate_hz")
    if config.HasField("endpointing"):
        raise UnsupportedField("endpointing applies to StreamingRecognize only: Recognize decodes the whole "
                               "audio (vad_filter drops its silences)", param="config.endpointing")


def check_streaming_config(config: pb.RecognitionConfig) -> None:
    """What does not apply to ``StreamingRecognize`` (live LINEAR16 or Ogg Opus audio, endpointed by its own VAD)."""
    if config.encoding not in (pb.LINEAR16, pb.OGG_OPUS, pb.AUDIO_ENCODING_UNSPECIFIED):
        raise UnsupportedField("StreamingRecognize takes LINEAR16 or OGG_OPUS audio (use Recognize for whole files)",
                               param="config.encoding")
    if config.sample_rate_hz and config.encoding == pb.OGG_OPUS:
        raise UnsupportedField("sample_rate_hz applies to LINEAR16 audio only: an Ogg Opus stream carries its "
                               "own rate (its OpusHead). Leave it 0", param="config.sample_rate_hz")
    if config.rescore not in ("", NO_RESCORER):
        raise UnsupportedField("rescore is available in Recognize, not in StreamingRecognize",
                               param="config.rescore")
    if config.HasField("vad_filter"):
        raise UnsupportedField("vad_filter is available in Recognize, not in StreamingRecognize: a stream is "
                               "already split into utterances by its endpointing VAD", param="config.vad_filter")


# (field, lowest, highest, whether the bounds themselves are allowed, unit)
ENDPOINTING_RANGES = {
    "silence_ms": (100, 10_000, True, " ms"),
    "speech_threshold": (0.0, 1.0, False, ""),
    "max_utterance_seconds": (1.0, 30.0, True, " s"),
}


def check_endpointing(endpointing: pb.EndpointingConfig) -> None:
    """Each set field of ``config.endpointing`` within its range, or INVALID_ARGUMENT naming it."""
    for name, (low, high, inclusive, unit) in ENDPOINTING_RANGES.items():
        if not endpointing.HasField(name):
            continue
        value = getattr(endpointing, name)
        inside = low <= value <= high if inclusive else low < value < high
        if not inside:
            span = f"{low:g}..{high:g}{unit}" if inclusive else f"between {low:g} and {high:g} (exclusive)"
            raise InvalidInput(f"config.endpointing.{name} must be {span}, got {value:g}",
                               param=f"config.endpointing.{name}")
