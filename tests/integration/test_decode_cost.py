"""What one request may cost: noise is checked for speech instead of decoded five times hotter, a
request past its decode time limit is stopped (REST 504, gRPC DEADLINE_EXCEEDED), and a gRPC deadline
that passes takes the request's rows out of the batch. Others are served all along."""

from __future__ import annotations

import contextlib
import io
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import numpy as np
import pytest
import soundfile as sf

from splitasr.audio import SAMPLE_RATE_HZ, decode_audio
from splitasr.audio.vad import has_speech
from splitasr.backbones.whisper import WhisperBackbone
from splitasr.decoding import DecodingOptions
from splitasr.decoding.whisper.decoder import WhisperDecoder
from splitasr_device._proto import recognizer_pb2 as pb
from splitasr_device._proto import recognizer_pb2_grpc
from tests.integration.abandoned import long_speech_flac, wait_until


def _noise(seconds: float, rms_dbfs: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * SAMPLE_RATE_HZ)) * 10 ** (rms_dbfs / 20)).astype(np.float32)


def _flac(audio: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, SAMPLE_RATE_HZ, format="FLAC")
    return buf.getvalue()


@contextlib.contextmanager
def decode_time_limit(settings, rtf: float, min_s: float):
    old = settings.decode_time_limit_rtf, settings.decode_time_limit_min_s
    settings.decode_time_limit_rtf, settings.decode_time_limit_min_s = rtf, min_s
    try:
        yield
    finally:
        settings.decode_time_limit_rtf, settings.decode_time_limit_min_s = old


# noise ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def decoders(backbone_cache_dir):
    backbone = WhisperBackbone.load("tiny.en", cache_dir=backbone_cache_dir, device="cpu")
    with ThreadPoolExecutor(1) as pool:
        yield WhisperDecoder(backbone), WhisperDecoder(backbone, speech_check=lambda a: pool.submit(has_speech, a))


def _decode(decoder, audio):
    # one sample per fallback temperature and a token cap keep the unchecked ladder quick on two cores
    request = decoder.start(audio, DecodingOptions(best_of=1, max_new_tokens=64))
    decoder.run([request])
    return request


def test_noise_is_checked_for_speech_instead_of_decoded_hotter(decoders, real_speech):
    plain, checked = decoders
    noise = _noise(30, -40)  # fails its first decode (compression ratio), as sampled text would too
    without, with_check = _decode(plain, noise), _decode(checked, noise)
    assert with_check.result.text == ""
    # Whisper's ladder decodes the window again at five hotter temperatures; the check stops it
    assert without.spent > 2 * with_check.spent, (without.spent, with_check.spent)
    # speech that passes its first decode never reaches the check: the same tokens, the same cost
    audio = decode_audio(real_speech[0]["path"])
    a, b = _decode(plain, audio), _decode(checked, audio)
    assert [s.tokens for s in a.result.segments] == [s.tokens for s in b.result.segments]
    assert a.spent == b.spent


def test_the_server_checks_noise_before_falling_back(rest_server):
    """Quiet noise (RMS -60 dBFS, above the digital-silence gate) makes tiny.en hallucinate dots and "you"
    at hot temperatures; the server's check answers empty text."""
    reply = httpx.post(f"{rest_server.url}/v1/audio/transcriptions", headers=rest_server.headers(),
                       files={"file": ("noise.flac", _flac(_noise(30, -60)))}, data={"model": "tiny.en"}, timeout=120)
    assert reply.status_code == 200, reply.text
    assert reply.json()["text"] == ""


# the decode time limit -----------------------------------------------------------------------------
def test_a_rest_request_past_its_decode_time_limit_is_stopped(rest_server, real_speech):
    goforward = next(r for r in real_speech if r["audio_filepath"].endswith("goforward.flac"))
    worker = rest_server.engine.worker
    url = f"{rest_server.url}/v1/audio/transcriptions"
    timed_out = worker.stats.timed_out
    with decode_time_limit(rest_server.engine.settings, rtf=0.001, min_s=0.3):
        reply = httpx.post(url, headers=rest_server.headers(), data={"model": "tiny.en"}, timeout=120,
                           files={"file": ("long.flac", long_speech_flac(goforward["path"], 120))})
    assert reply.status_code == 504, reply.text
    error = reply.json()["error"]
    assert error["code"] == "decode_timeout" and "SPLITASR_DECODE_TIME_LIMIT_RTF" in error["message"]
    assert worker.stats.timed_out == timed_out + 1
    assert wait_until(lambda: worker.live_rows == 0, 30), "its rows stayed in the batch"
    with open(goforward["path"], "rb") as fh:  # the next request decodes as usual
        reply = httpx.post(url, headers=rest_server.headers(), files={"file": ("a.flac", fh.read())},
                           data={"model": "tiny.en"}, timeout=120)
    assert reply.status_code == 200 and "forward" in reply.json()["text"].lower()


@pytest.fixture(scope="module")
def recognizer(grpc_server):
    with grpc.insecure_channel(grpc_server.address) as channel:
        yield recognizer_pb2_grpc.RecognizerStub(channel)


def _recognize(recognizer, grpc_server, audio: bytes, timeout: float = 120):
    request = pb.RecognizeRequest(config=pb.RecognitionConfig(encoding=pb.ENCODED_FILE), audio=audio)
    return recognizer.Recognize(request, metadata=grpc_server.metadata("alice"), timeout=timeout)


def test_a_grpc_request_past_its_decode_time_limit_is_deadline_exceeded(grpc_server, recognizer, real_speech):
    goforward = next(r for r in real_speech if r["audio_filepath"].endswith("goforward.flac"))
    with decode_time_limit(grpc_server.engine.settings, rtf=0.001, min_s=0.3), pytest.raises(grpc.RpcError) as info:
        _recognize(recognizer, grpc_server, long_speech_flac(goforward["path"], 120))
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "took more than its limit" in info.value.details()
    with open(goforward["path"], "rb") as fh:
        assert "forward" in _recognize(recognizer, grpc_server, fh.read()).text.lower()


def test_a_passed_grpc_deadline_takes_the_decode_out_of_the_batch(grpc_server, recognizer, real_speech):
    goforward = next(r for r in real_speech if r["audio_filepath"].endswith("goforward.flac"))
    worker = grpc_server.engine.worker
    cancelled = worker.stats.cancelled
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:  # 5 minutes of speech: a minute of work or more
        _recognize(recognizer, grpc_server, long_speech_flac(goforward["path"], 300), timeout=4)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 30
    assert wait_until(lambda: worker.stats.cancelled > cancelled, 30), "the abandoned request was not cancelled"
    assert wait_until(lambda: worker.live_rows == 0 and worker.pending == 0, 30), "its rows stayed in the batch"
    with open(goforward["path"], "rb") as fh:
        assert "forward" in _recognize(recognizer, grpc_server, fh.read()).text.lower()
