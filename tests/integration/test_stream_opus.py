"""Ogg Opus from the device over StreamingRecognize, on a real gRPC server with tiny.en."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from splitasr.audio import decode_audio
from splitasr_device import SplitASRClient
from splitasr_device._proto import recognizer_pb2 as pb
from splitasr_device._proto import recognizer_pb2_grpc
from splitasr_device.cli import main as device_main
from splitasr_device.opus import OggOpusEncoder

from .grpc_server import TOKENS


@pytest.fixture(scope="module")
def recognizer(grpc_server):
    with grpc.insecure_channel(grpc_server.address) as channel:
        yield recognizer_pb2_grpc.RecognizerStub(channel)


def _ogg(path) -> bytes:
    samples = (decode_audio(path) * 32767).astype(np.int16)
    encoder = OggOpusEncoder(16_000)
    return b"".join([encoder.encode(samples[i: i + 1600]) for i in range(0, len(samples), 1600)]
                    + [encoder.close()])


def _requests(data: bytes, piece: int = 700, **config):
    config = pb.RecognitionConfig(encoding=pb.OGG_OPUS, **config)
    yield pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(config=config))
    for i in range(0, len(data), piece):
        yield pb.StreamingRecognizeRequest(audio=data[i: i + piece])


def _final_text(responses) -> str:
    return " ".join(r.results[0].transcript.strip() for r in responses if r.results and r.results[0].is_final)


def _stream(client: SplitASRClient, path, codec: str) -> tuple[str, int, list[float]]:
    before = client.bytes_sent
    finals = [u for u in client.stream(path, interim_results=False, codec=codec) if u.is_final]
    text = " ".join(u.text.strip() for u in finals)
    return text, client.bytes_sent - before, [t for u in finals for t in (u.start, u.end)]


def test_opus_from_the_device_gives_the_linear16_transcript_at_a_tenth_of_the_bytes(grpc_server, real_speech):
    path = real_speech[0]["path"]  # 7.1 s of LibriVox speech
    with SplitASRClient(grpc_server.address, token=TOKENS["alice"]) as client:
        pcm_text, pcm_bytes, pcm_times = _stream(client, path, "linear16")
        opus_text, opus_bytes, opus_times = _stream(client, path, "opus")
    assert pcm_text and opus_text == pcm_text
    assert opus_times == pytest.approx(pcm_times, abs=0.05), "one timeline: no codec delay in the reported times"
    assert opus_bytes < pcm_bytes / 8, (opus_bytes, pcm_bytes)
    assert opus_bytes / (real_speech[0]["duration"] / 60) < 0.25e6, "at most 0.25 MB per audio minute"


def test_device_cli_streams_opus(grpc_server, real_speech, capsys):
    code = device_main(["--server", grpc_server.address, "--token", TOKENS["alice"], "stream",
                        str(real_speech[1]["path"]), "--codec", "opus", "--no-interim", "--no-adapter"])
    assert code == 0
    assert "young man" in capsys.readouterr().out.lower()


@pytest.mark.parametrize(("damage", "message"), [
    (lambda s: s[:1500] + bytes([s[1500] ^ 0x10]) + s[1501:], "CRC mismatch (the stream is corrupt)"),
    (lambda s: s[:-7], "Ogg Opus stream is truncated: it ends inside a page"),
    (lambda s: b"\0\1" * 4000, "not an Ogg stream at byte 0"),
])
def test_corrupt_or_truncated_opus_is_invalid_argument_and_the_next_stream_works(grpc_server, recognizer,
                                                                                 real_speech, damage, message):
    good = _ogg(real_speech[1]["path"])
    md = grpc_server.metadata()
    with pytest.raises(grpc.RpcError) as info:
        list(recognizer.StreamingRecognize(_requests(damage(good)), metadata=md))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()
    text = _final_text(recognizer.StreamingRecognize(_requests(good), metadata=md))
    assert "young man" in text.lower()


def test_opus_refuses_a_sample_rate(grpc_server, recognizer):
    with pytest.raises(grpc.RpcError) as info:
        list(recognizer.StreamingRecognize(_requests(b"", sample_rate_hz=16000), metadata=grpc_server.metadata()))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sample_rate_hz applies to LINEAR16 audio only" in info.value.details()


def test_recognize_takes_ogg_opus_too(grpc_server, recognizer, real_speech):
    config = pb.RecognitionConfig(encoding=pb.OGG_OPUS)
    response = recognizer.Recognize(pb.RecognizeRequest(config=config, audio=_ogg(real_speech[1]["path"])),
                                    metadata=grpc_server.metadata())
    assert "young man" in response.text.lower()
