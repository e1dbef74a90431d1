"""Hostile audio through REST (``/v1/audio/transcriptions``) and gRPC (``Recognize``), one real server.

Odd but valid audio (384 kHz, 8 channels) is transcribed; everything else gets 400 /
INVALID_ARGUMENT naming the problem, and the server keeps serving another tenant.
"""

from __future__ import annotations

import grpc
import httpx
import numpy as np
import pytest
import soxr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitasr.audio import decode_audio
from splitasr_device._proto import recognizer_pb2 as pb
from tests.reliability.conftest import (
    FUZZ_EXAMPLES,
    TRACE_MARKERS,
    assert_grpc_error,
    assert_rest_error,
    assert_serves_others,
    serve_both,
)
from tests.reliability.hostile import encode, float_wav, silence_flac, wav_header_rate, without_flac_length

INVALID = grpc.StatusCode.INVALID_ARGUMENT
MAX_AUDIO_S = 600  # the module's server: SPLITASR_MAX_AUDIO_SECONDS


@pytest.fixture(scope="module")
def service(backbone_cache_dir, tmp_path_factory):
    with serve_both(backbone_cache_dir, tmp_path_factory.mktemp("hostile-audio"), max_audio_seconds=MAX_AUDIO_S,
                    max_upload_bytes=12 * 1024 * 1024, grpc_max_message_bytes=24 * 1024 * 1024) as running:
        yield running


@pytest.fixture(scope="module")
def speech(goforward) -> np.ndarray:
    return decode_audio(goforward)


@pytest.fixture(scope="module")
def two_hours_of_silence() -> bytes:
    return silence_flac(2 * 3600)


def rest(service, audio: bytes, filename: str = "a.bin") -> httpx.Response:
    return httpx.post(f"{service.url}/v1/audio/transcriptions", files={"file": (filename, audio)},
                      data={"model": "tiny.en"}, headers=service.headers("alice"), timeout=120)


def recognize(service, audio: bytes, **config):
    encoding = pb.LINEAR16 if "sample_rate_hz" in config else pb.ENCODED_FILE
    return service.recognizer.Recognize(pb.RecognizeRequest(
        config=pb.RecognitionConfig(encoding=encoding, **config), audio=audio),
        metadata=service.metadata("alice"), timeout=120)


def rejected_cases(speech: np.ndarray, goforward: bytes, two_hours: bytes) -> list[tuple[str, bytes, str]]:
    nan = speech.copy()
    nan[1000] = np.nan
    inf = speech.copy()
    inf[5] = np.inf
    opus = encode(speech, 16_000, "OGG")
    return [
        ("random-bytes", bytes(np.random.default_rng(1).integers(0, 256, 20_000, dtype=np.uint8)), "could not decode"),
        ("text", b"hello, this is not audio\n" * 50, "could not decode"),
        ("hls-playlist", b"#EXTM3U\n#EXT-X-VERSION:3\nfile:///etc/passwd\n", "could not decode"),
        ("flac-magic-only", goforward[:4], "could not decode"),
        ("flac-headers-only", goforward[:60], ""),
        ("wav-header-no-data", wav_header_rate(16_000, seconds=0)[:44], ""),
        ("opus-first-page", opus[:200], ""),
        ("1-hz-wav", wav_header_rate(1, seconds=4), "sample rate 1 hz"),
        ("500-khz-wav", wav_header_rate(500_000, seconds=0.1), "sample rate 500000 hz"),
        ("64-channels", wav_header_rate(16_000, seconds=0.2, channels=64), "64 channels"),
        ("nan-float-wav", float_wav(nan), "non-finite"),
        ("inf-float-wav", float_wav(inf), "non-finite"),
        ("2h-silence-flac", two_hours, "longer than the limit"),
        ("2h-silence-flac-no-length", without_flac_length(two_hours), "longer than the limit"),
    ]


def test_rejected_audio_over_rest_and_grpc(service, speech, goforward, two_hours_of_silence):
    assert len(two_hours_of_silence) < 2 << 20  # compressed: the upload itself is small
    for case, audio, words in rejected_cases(speech, goforward, two_hours_of_silence):
        try:
            assert_rest_error(rest(service, audio), 400, words)
            assert_grpc_error(lambda audio=audio: recognize(service, audio), INVALID, words)
        except AssertionError as exc:
            raise AssertionError(f"case {case}: {exc}") from None
    assert_rest_error(rest(service, b""), 400, "empty")
    assert_grpc_error(lambda: recognize(service, b""), INVALID, "empty")
    assert_serves_others(service, goforward)


def test_linear16_edge_cases_over_grpc(service, speech):
    pcm = (speech * 32767).astype("<i2").tobytes()
    assert_grpc_error(lambda: recognize(service, pcm, sample_rate_hz=1), INVALID, "sample_rate_hz")
    assert_grpc_error(lambda: recognize(service, b"", sample_rate_hz=16_000), INVALID, "empty")
    assert_grpc_error(lambda: recognize(service, b"\x01", sample_rate_hz=16_000), INVALID, "empty")  # half a sample
    too_long = bytes(2 * 16_000 * (MAX_AUDIO_S + 1))
    assert_grpc_error(lambda: recognize(service, too_long, sample_rate_hz=16_000), INVALID, "longer than the limit")
    high = (soxr.resample(speech, 16_000, 384_000) * 32767).astype("<i2").tobytes()
    assert "forward" in recognize(service, high, sample_rate_hz=384_000).text.lower()


def test_odd_but_valid_audio_is_transcribed(service, speech):
    """384 kHz (the highest accepted rate), 8 channels, a truncated file: each still gives the words.
    (One transport each, alternating, to keep the default suite fast; decoding is shared code.)"""
    high = encode(soxr.resample(speech, 16_000, 384_000), 384_000, "WAV")
    channels = np.stack([speech * (0.5 + 0.05 * c) for c in range(8)], axis=1)
    eight = encode(channels, 16_000, "FLAC")
    cut = encode(np.concatenate([speech, speech]), 16_000, "FLAC")
    cut = cut[: int(len(cut) * 0.55)]  # the second copy is cut short: what decodes is used
    for case, audio, transport in (("384-khz", high, "rest"), ("8-channels", eight, "grpc"),
                                   ("truncated-flac", cut, "rest")):
        if transport == "rest":
            r = rest(service, audio)
            assert r.status_code == 200 and "forward" in r.json()["text"].lower(), (case, r.text)
        else:
            assert "forward" in recognize(service, audio).text.lower(), case


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(blob=st.binary(min_size=1, max_size=4096) | st.builds(lambda head, tail: head + tail, st.sampled_from(
    [b"RIFF\x24\x00\x00\x00WAVEfmt ", b"fLaC\x00\x00\x00\x22", b"OggS\x00\x02", b"ID3\x03\x00", b"\x1aE\xdf\xa3",
     b"\x00\x00\x00\x20ftypM4A "]), st.binary(max_size=2048)))
def test_fuzzed_audio_bytes_get_400_or_a_transcript(service, blob):
    r = rest(service, blob)
    assert r.status_code in (200, 400), r.text[:300]
    assert not any(m in r.text for m in TRACE_MARKERS)
    try:
        recognize(service, blob)
    except grpc.RpcError as exc:
        assert exc.code() == INVALID, (exc.code(), exc.details())


@pytest.mark.slow
def test_two_hours_of_silence_as_opus(service, goforward):
    """Opus in Ogg: the length comes from the last page, not a header field."""
    silence = np.zeros(2 * 3600 * 16_000, dtype=np.float32)
    opus = encode(silence, 16_000, "OGG")
    assert len(opus) < 8 << 20
    assert_rest_error(rest(service, opus), 400, "longer than the limit")
    assert_grpc_error(lambda: recognize(service, opus), INVALID, "longer than the limit")
    assert_serves_others(service, goforward)
