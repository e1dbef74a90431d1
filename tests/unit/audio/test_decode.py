"""decode_audio on real files encoded here with PyAV, and on broken or out-of-limit input."""

from __future__ import annotations

import io
import re
import struct
import time
import wave
from pathlib import Path

import av
import numpy as np
import pytest
import soxr

from splitasr.audio import (
    MAX_CHANNELS,
    SAMPLE_RATE_HZ,
    decode_audio,
    duration_seconds,
    encode_wav_pcm16,
)
from splitasr.errors import BadAudio, InvalidInput

SECONDS = 1.5
TONE_HZ = 440.0
LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}
RATES = (8000, 22050, 44100, 48000)
LOSSLESS = {"pcm_s16le", "pcm_f32le", "flac"}

# (id, container format, codec, channel counts). MP3 holds at most two channels, and this FFmpeg
# build has no libvorbis: its built-in (experimental) vorbis encoder writes stereo only.
CODECS = [
    ("wav-s16", "wav", "pcm_s16le", (1, 2, 6)),
    ("wav-f32", "wav", "pcm_f32le", (1, 2, 6)),
    ("flac", "flac", "flac", (1, 2, 6)),
    ("mp3", "mp3", "libmp3lame", (1, 2)),
    ("ogg-vorbis", "ogg", "vorbis", (2,)),
    ("ogg-opus", "ogg", "libopus", (1, 2, 6)),
    ("webm-opus", "webm", "libopus", (1, 2, 6)),
    ("m4a-aac", "ipod", "aac", (1, 2, 6)),
]
CASES = [
    pytest.param(container, codec, rate, channels, id=f"{name}-{rate}-{channels}ch")
    for name, container, codec, channel_counts in CODECS
    for rate in RATES
    for channels in channel_counts
]


def make_signal(rate: int, channels: int = 1, seconds: float = SECONDS) -> np.ndarray:
    """(channels, n) float32: a 440 Hz tone plus a quieter 1-3 kHz chirp in every channel."""
    t = np.arange(int(seconds * rate)) / rate
    chirp_phase = 2 * np.pi * (1000 * t + (2000 / (2 * seconds)) * t**2)
    mono = 0.5 * np.sin(2 * np.pi * TONE_HZ * t) + 0.1 * np.sin(chirp_phase)
    return np.tile(mono.astype(np.float32), (channels, 1))


def encode(signal: np.ndarray, rate: int, container: str, codec: str) -> bytes:
    """Encode (channels, n) float samples with PyAV; the encoder's own rate and format are used."""
    layout = LAYOUTS[signal.shape[0]]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(codec, rate=48000 if codec == "libopus" else rate, layout=layout)
        if codec == "vorbis":
            stream.codec_context.options = {"strict": "experimental"}
        converter = av.AudioResampler(format=stream.format.name, layout=layout, rate=stream.rate)
        for start in range(0, signal.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(signal[:, start : start + 1024]), format="fltp", layout=layout
            )
            frame.sample_rate = rate
            for converted in converter.resample(frame):
                out.mux(stream.encode(converted))
        for converted in converter.resample(None):
            out.mux(stream.encode(converted))
        out.mux(stream.encode(None))
    return buffer.getvalue()


def stdlib_wav(rate: int, channels: int = 1, frames: int = 1600) -> bytes:
    """A 16-bit WAV written by the stdlib (which accepts rates FFmpeg-based decoders may not)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.zeros(frames * channels, np.int16).tobytes())
    return buffer.getvalue()


def peak_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum)) * SAMPLE_RATE_HZ / len(samples)


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))


@pytest.mark.parametrize(("container", "codec", "rate", "channels"), CASES)
def test_decodes_every_format_to_16k_mono(container: str, codec: str, rate: int, channels: int) -> None:
    signal = make_signal(rate, channels)
    samples = decode_audio(encode(signal, rate, container, codec))

    assert samples.dtype == np.float32 and samples.ndim == 1
    expected = int(SECONDS * SAMPLE_RATE_HZ)
    # Lossy codecs add priming/padding (AAC at 8 kHz: up to two 1024-sample frames = 0.26 s).
    tolerance = 2 if codec in LOSSLESS else int(0.3 * SAMPLE_RATE_HZ)
    assert abs(len(samples) - expected) <= tolerance
    assert abs(peak_hz(samples) - TONE_HZ) < 3.0
    # Level over the middle second (codec padding is silence). Lossy 5.1 codecs low-pass the LFE
    # channel, which takes up to 1/6 off the average of six channels.
    middle = samples[SAMPLE_RATE_HZ // 4 : SAMPLE_RATE_HZ * 5 // 4]
    assert 0.75 < rms(middle) / rms(signal[0]) < 1.2
    assert np.abs(samples).max() <= 1.0
    if codec in LOSSLESS:  # bit-exact up to 16-bit quantization and the resampler itself
        reference = soxr.resample(signal[0], rate, SAMPLE_RATE_HZ)
        np.testing.assert_allclose(samples, reference[: len(samples)], atol=2e-3)


def test_channels_are_averaged() -> None:
    left = make_signal(SAMPLE_RATE_HZ)[0]
    stereo = np.stack([left, np.zeros_like(left)], axis=1)
    samples = decode_audio(encode_wav_pcm16(stereo, SAMPLE_RATE_HZ))
    np.testing.assert_allclose(samples, left / 2, atol=1e-4)


def test_wav_roundtrip_and_duration() -> None:
    signal = make_signal(SAMPLE_RATE_HZ)[0]
    data = encode_wav_pcm16(signal, SAMPLE_RATE_HZ)
    with wave.open(io.BytesIO(data)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, SAMPLE_RATE_HZ)
    samples = decode_audio(data)
    # Written as x * 32767 and read back as n / 32768: 16-bit quantization plus that 3e-5 step.
    np.testing.assert_allclose(samples, signal, atol=1e-4)
    assert duration_seconds(samples) == pytest.approx(SECONDS)


def test_encode_wav_rejects_bad_samples() -> None:
    with pytest.raises(InvalidInput, match="NaN"):
        encode_wav_pcm16(np.array([0.0, np.nan]), SAMPLE_RATE_HZ)
    with pytest.raises(InvalidInput, match="shape"):
        encode_wav_pcm16(np.zeros((2, 2, 2)), SAMPLE_RATE_HZ)


def test_float_wav_above_full_scale_is_clipped() -> None:
    loud = 2.0 * make_signal(SAMPLE_RATE_HZ)
    samples = decode_audio(encode(loud, SAMPLE_RATE_HZ, "wav", "pcm_f32le"))
    assert samples.max() == 1.0 and samples.min() == -1.0


def test_decodes_from_path(tmp_path: Path) -> None:
    path = tmp_path / "tone.flac"
    path.write_bytes(encode(make_signal(44100), 44100, "flac", "flac"))
    assert len(decode_audio(path)) == len(decode_audio(str(path))) == int(SECONDS * SAMPLE_RATE_HZ)


@pytest.mark.parametrize(
    ("data", "cause"),
    [
        pytest.param(b"", "empty (0 bytes)", id="empty"),
        pytest.param(np.random.default_rng(0).bytes(4000), "supported format", id="random-bytes"),
        # An HLS playlist would make FFmpeg open the files it lists: its demuxer is not allowed.
        pytest.param(b"#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n", "supported format", id="hls-playlist"),
        pytest.param(stdlib_wav(1000), "1000 Hz", id="rate-1000"),
        pytest.param(stdlib_wav(400_000), "400000 Hz", id="rate-400k"),
        pytest.param(stdlib_wav(16000, MAX_CHANNELS + 1), f"{MAX_CHANNELS + 1} channels", id="channels"),
        pytest.param(stdlib_wav(16000, frames=0), "no samples", id="zero-frames"),
    ],
)
def test_rejects_bad_input(data: bytes, cause: str) -> None:
    with pytest.raises(BadAudio, match=re.escape(cause)):
        decode_audio(data)


def test_rejects_missing_path_and_never_treats_it_as_a_url(tmp_path: Path) -> None:
    for path in (tmp_path / "missing.wav", "http://127.0.0.1:9/audio.wav", tmp_path):
        with pytest.raises(BadAudio, match="cannot read audio file"):
            decode_audio(path)
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(BadAudio, match="empty"):
        decode_audio(tmp_path / "empty.wav")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_rejects_non_finite_float_wav(bad: float) -> None:
    signal = make_signal(SAMPLE_RATE_HZ)
    signal[0, 100] = bad
    with pytest.raises(BadAudio, match="non-finite"):
        decode_audio(encode(signal, SAMPLE_RATE_HZ, "wav", "pcm_f32le"))


def test_rejects_a_file_without_audio() -> None:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as out:
        stream = out.add_stream("ffv1", rate=10)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with pytest.raises(BadAudio, match="no audio stream"):
        decode_audio(buffer.getvalue())


@pytest.mark.parametrize(("container", "codec"), [("flac", "flac"), ("mp3", "libmp3lame")])
def test_truncated_file_decodes_what_is_there(container: str, codec: str) -> None:
    data = encode(make_signal(44100), 44100, container, codec)
    samples = decode_audio(data[: len(data) // 2])
    assert 0.2 * SECONDS < duration_seconds(samples) < 0.9 * SECONDS
    assert abs(peak_hz(samples) - TONE_HZ) < 5.0


@pytest.mark.parametrize(
    ("container", "codec"), [("flac", "flac"), ("mp3", "libmp3lame"), ("ogg", "libopus")]
)
def test_file_cut_to_its_first_bytes_is_rejected(container: str, codec: str) -> None:
    data = encode(make_signal(44100), 44100, container, codec)
    with pytest.raises(BadAudio, match="could not decode audio"):
        decode_audio(data[:10])


def test_stream_where_no_packet_decodes_is_rejected() -> None:
    # A valid m4a container whose AAC packets are replaced by random bytes of the same size.
    source = av.open(io.BytesIO(encode(make_signal(16000), 16000, "ipod", "aac")))
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    with source, av.open(buffer, "w", format="ipod") as out:
        stream = out.add_stream_from_template(source.streams.audio[0])
        for packet in source.demux(source.streams.audio[0]):
            if packet.size:
                garbage = av.Packet(rng.bytes(packet.size))
                garbage.pts, garbage.dts, garbage.time_base = packet.pts, packet.dts, packet.time_base
                garbage.stream = stream
                out.mux(garbage)
    with pytest.raises(BadAudio, match="truncated or corrupt"):
        decode_audio(buffer.getvalue())


def test_ogg_cut_inside_its_first_page_says_truncated() -> None:
    # FFmpeg's Ogg pages hold about a second: half of 1.5 s ends inside the first audio page.
    data = encode(make_signal(48000), 48000, "ogg", "libopus")
    with pytest.raises(BadAudio, match="truncated"):
        decode_audio(data[: len(data) // 2])


@pytest.mark.parametrize(("container", "codec"), [("wav", "pcm_s16le"), ("mp3", "libmp3lame")])
def test_rejects_audio_longer_than_max_seconds(container: str, codec: str) -> None:
    data = encode(make_signal(22050), 22050, container, codec)
    with pytest.raises(BadAudio, match="limit of 1 s"):
        decode_audio(data, max_seconds=1.0)
    assert len(decode_audio(data, max_seconds=2.0)) > 0


@pytest.fixture(scope="module")
def two_hour_flac() -> bytes:
    """Two hours of silence at 8 kHz: 1.3 MB of FLAC, 57.6 M samples if decoded."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="flac") as out:
        stream = out.add_stream("flac", rate=8000, layout="mono")
        minute = np.zeros((1, 8000 * 60), np.int16)
        for _ in range(120):
            frame = av.AudioFrame.from_ndarray(minute, format="s16", layout="mono")
            frame.sample_rate = 8000
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buffer.getvalue()


def test_two_hour_file_is_rejected_from_its_header(two_hour_flac: bytes) -> None:
    started = time.perf_counter()
    with pytest.raises(BadAudio, match="limit of 3600 s"):
        decode_audio(two_hour_flac, max_seconds=3600)
    assert time.perf_counter() - started < 0.5


def test_unknown_duration_stops_decoding_at_the_limit(two_hour_flac: bytes) -> None:
    # STREAMINFO's 36-bit total-sample count set to 0 ("unknown"), so only decoding can tell.
    data = bytearray(two_hour_flac)
    streaminfo = 8  # "fLaC" + the 4-byte metadata block header
    data[streaminfo + 13] &= 0xF0
    data[streaminfo + 14 : streaminfo + 18] = bytes(4)
    assert av.open(io.BytesIO(bytes(data))).duration is None
    started = time.perf_counter()
    with pytest.raises(BadAudio, match="limit of 60 s"):
        decode_audio(bytes(data), max_seconds=60)
    assert time.perf_counter() - started < 2.0  # decoding all two hours takes several seconds


def test_wav_header_claiming_hours_decodes_only_the_data_present() -> None:
    data = bytearray(encode_wav_pcm16(np.zeros(SAMPLE_RATE_HZ, np.float32), SAMPLE_RATE_HZ))
    claimed = SAMPLE_RATE_HZ * 2 * 7200  # two hours of 16-bit mono
    data[4:8] = struct.pack("<I", claimed + 36)
    data[40:44] = struct.pack("<I", claimed)
    started = time.perf_counter()
    assert len(decode_audio(bytes(data), max_seconds=3600)) == SAMPLE_RATE_HZ
    assert time.perf_counter() - started < 0.5
