"""gRPC: a RecognitionConfig field that does not apply, or one the server does not know, is INVALID_ARGUMENT."""

from __future__ import annotations

import grpc
import pytest

from splitasr_device._proto import recognizer_pb2 as pb
from splitasr_device._proto import recognizer_pb2_grpc

RECOGNIZE = "/splitasr.v1.Recognizer/Recognize"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _raw_recognize(channel, body: bytes, metadata):
    call = channel.unary_unary(RECOGNIZE, request_serializer=lambda b: b,
                               response_deserializer=pb.RecognizeResponse.FromString)
    return call(body, metadata=metadata, timeout=120)


@pytest.fixture(scope="module")
def channel(grpc_server):
    with grpc.insecure_channel(grpc_server.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def flac(real_speech) -> bytes:
    return real_speech[-1]["path"].read_bytes()


def _error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def test_sample_rate_with_an_encoded_file_is_refused(grpc_server, channel, flac):
    stub = recognizer_pb2_grpc.RecognizerStub(channel)
    request = pb.RecognizeRequest(config=pb.RecognitionConfig(encoding=pb.ENCODED_FILE, sample_rate_hz=8000), audio=flac)
    error = _error(lambda: stub.Recognize(request, metadata=grpc_server.metadata(), timeout=60))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sample_rate_hz applies to LINEAR16" in error.details()
    plain = pb.RecognizeRequest(config=pb.RecognitionConfig(encoding=pb.ENCODED_FILE), audio=flac)
    assert "forward" in stub.Recognize(plain, metadata=grpc_server.metadata(), timeout=120).text.lower()


def test_unknown_fields_from_a_newer_client_are_refused(grpc_server, channel, flac):
    config = pb.RecognitionConfig(encoding=pb.ENCODED_FILE).SerializeToString()
    good = _field(1, config) + _field(2, flac)
    assert "forward" in _raw_recognize(channel, good, grpc_server.metadata()).text.lower()

    in_config = _field(1, config + _field(40, b"diarize")) + _field(2, flac)
    error = _error(lambda: _raw_recognize(channel, in_config, grpc_server.metadata()))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown field number(s) 40 in config of splitasr.v1.RecognitionConfig" in error.details()

    in_request = good + _field(9, b"x")
    error = _error(lambda: _raw_recognize(channel, in_request, grpc_server.metadata()))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "9" in error.details()


def test_stream_audio_messages_with_unknown_fields_are_refused(grpc_server, channel):
    first = pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(
        config=pb.RecognitionConfig(encoding=pb.LINEAR16, sample_rate_hz=16000))).SerializeToString()
    audio = pb.StreamingRecognizeRequest(audio=b"\0" * 3200).SerializeToString() + _field(12, b"x")
    call = channel.stream_stream("/splitasr.v1.Recognizer/StreamingRecognize", request_serializer=lambda b: b,
                                 response_deserializer=pb.StreamingRecognizeResponse.FromString)
    error = _error(lambda: list(call(iter([first, audio]), metadata=grpc_server.metadata(), timeout=60)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown field number(s) 12" in error.details()
