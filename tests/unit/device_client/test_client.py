"""The device client without a real server: settings, audio, retries, resume."""

from __future__ import annotations

import subprocess
import sys
import wave
from concurrent import futures

import grpc
import numpy as np
import pytest

from splitasr_device import (
    DeviceError,
    RetryPolicy,
    SplitASRClient,
    adapter_name_for,
    load_config,
    read_pcm,
)
from splitasr_device._proto import recognizer_pb2 as pb
from splitasr_device._proto import recognizer_pb2_grpc
from splitasr_device.audio import chunks
from splitasr_device.retry import call_with_retry


def test_importing_the_client_loads_no_heavy_module():
    code = ("import sys, splitasr_device, splitasr_device.cli; "
            "print(sorted(m for m in ('torch', 'transformers', 'numpy', 'splitasr') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_settings_precedence_flag_env_file(tmp_path):
    ini = tmp_path / "device.ini"
    ini.write_text("[device]\nserver = file:1\ntoken = from-file\ntls = yes\nadapter = ~/me.safetensors\n")
    env = {"SPLITASR_DEVICE_CONFIG": str(ini), "SPLITASR_DEVICE_TOKEN": "from-env"}
    config = load_config({"server": "flag:2", "token": None}, env=env)
    assert (config.server, config.token, config.tls) == ("flag:2", "from-env", True)
    assert config.adapter.name == "me.safetensors" and "~" not in str(config.adapter)


def test_settings_errors_are_clear(tmp_path):
    with pytest.raises(DeviceError, match="tls must be"):
        load_config({}, env={"SPLITASR_DEVICE_TLS": "maybe"})
    bad = tmp_path / "bad.ini"
    bad.write_text("[device]\nsevrer = x\n")
    with pytest.raises(DeviceError, match="unknown setting 'sevrer'"):
        load_config({}, env={}, config_file=bad)
    with pytest.raises(DeviceError, match="does not exist"):
        load_config({}, env={"SPLITASR_DEVICE_CONFIG": str(tmp_path / "none.ini")})


def _wav(path, samples: np.ndarray, rate: int, width: int = 2) -> None:
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    ints = np.round(samples * 32767).astype(np.int64)
    if width == 2:
        raw = ints.astype("<i2").tobytes()
    elif width in (3, 4):
        raw = b"".join(int(v * 256 ** (width - 2)).to_bytes(width, "little", signed=True) for v in ints.reshape(-1))
    else:
        raw = (ints // 256 + 128).astype(np.uint8).tobytes()
    with wave.open(str(path), "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(width)
        f.setframerate(rate)
        f.writeframes(raw)


@pytest.mark.parametrize("width", [1, 2, 3, 4])
@pytest.mark.parametrize("channels", [1, 2, 3])
def test_wav_is_read_as_mono_int16(tmp_path, width, channels):
    left = np.linspace(-0.5, 0.5, 4410)
    columns = [left, -0.5 * left, 0.25 * left][:channels]
    _wav(tmp_path / "a.wav", np.stack(columns, axis=1), 44100, width)
    pcm = read_pcm(tmp_path / "a.wav")
    assert pcm.rate_hz == 44100 and pcm.seconds == pytest.approx(0.1)
    got = np.frombuffer(pcm.data, "<i2") / 32768
    np.testing.assert_allclose(got, sum(columns) / channels, atol=0.01 if width == 1 else 1e-3)


def test_flac_needs_soundfile_and_reads_with_it(real_speech):
    pcm = read_pcm(real_speech[-1]["path"])  # soundfile is a dev dependency
    assert pcm.rate_hz > 0 and pcm.seconds == pytest.approx(real_speech[-1]["duration"], abs=0.05)
    assert [len(c) for c in chunks(pcm, 100)][:2] == [pcm.rate_hz // 10 * 2] * 2


def test_unreadable_audio_is_a_clear_error(tmp_path):
    with pytest.raises(DeviceError, match="no such file"):
        read_pcm(tmp_path / "missing.wav")
    (tmp_path / "x.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(DeviceError, match="not a PCM WAV"):
        read_pcm(tmp_path / "x.wav")


def test_adapter_names_from_files():
    assert adapter_name_for("/x/my voice (2).safetensors") == "my-voice-2"
    assert adapter_name_for("....safetensors") == "adapter"


class _Unavailable(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return "down"


def test_retries_back_off_on_unavailable_only():
    calls, sleeps = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise _Unavailable()
        return "ok"

    policy = RetryPolicy(attempts=4, base_delay_s=0.1, max_delay_s=0.15)
    assert call_with_retry(flaky, policy, sleep=sleeps.append) == "ok"
    assert len(sleeps) == 2 and 0 <= sleeps[0] <= 0.1 and 0 <= sleeps[1] <= 0.15
    with pytest.raises(_Unavailable):
        call_with_retry(lambda: (_ for _ in ()).throw(_Unavailable()), RetryPolicy(attempts=2), sleep=lambda s: None)


class _DroppingRecognizer(recognizer_pb2_grpc.RecognizerServicer):
    """Finalises the first second of audio, then fails UNAVAILABLE once; on the next stream checks
    that the client resumed at 1.0 s with exactly the audio after it."""

    def __init__(self, rate: int):
        self.rate = rate
        self.streams: list[tuple[float, bytes]] = []

    def StreamingRecognize(self, request_iterator, context):
        config = next(request_iterator).streaming_config
        audio = b""
        first = not self.streams
        for request in request_iterator:
            audio += request.audio
            if first and len(audio) >= 2 * self.rate * 1.5:
                self.streams.append((config.time_offset_seconds, audio))
                yield pb.StreamingRecognizeResponse(results=[pb.StreamingRecognitionResult(
                    transcript="one", is_final=True, start_seconds=0.0, result_end_seconds=1.0)])
                context.abort(grpc.StatusCode.UNAVAILABLE, "server restarting")
        self.streams.append((config.time_offset_seconds, audio))
        offset = config.time_offset_seconds
        yield pb.StreamingRecognizeResponse(results=[pb.StreamingRecognitionResult(
            transcript="two", is_final=True, start_seconds=offset, result_end_seconds=offset + len(audio) / 2 / self.rate)])


def _stream_through(servicer, pieces: list[bytes], **options) -> list:
    """``client.stream(pieces, **options)`` against ``servicer`` on a loopback server (3 attempts)."""
    server = grpc.server(futures.ThreadPoolExecutor(4))
    recognizer_pb2_grpc.add_RecognizerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        client = SplitASRClient(f"127.0.0.1:{port}", retry=RetryPolicy(attempts=3, base_delay_s=0.01))
        return list(client.stream(pieces, **options))
    finally:
        server.stop(None)


def test_a_dropped_stream_resumes_after_the_last_final():
    rate = 8000
    signal = (np.arange(3 * rate) % 2000).astype("<i2").tobytes()  # 3 s, every sample identifiable
    servicer = _DroppingRecognizer(rate)
    updates = _stream_through(servicer, [signal[i: i + 1600] for i in range(0, len(signal), 1600)],
                              sample_rate_hz=rate)
    assert [u.text for u in updates] == ["one", "two"]
    assert updates[1].start == pytest.approx(1.0) and updates[1].end == pytest.approx(3.0)
    (offset1, _), (offset2, resent) = servicer.streams
    assert offset1 == 0.0 and offset2 == pytest.approx(1.0)
    assert resent == signal[2 * rate:]  # exactly the audio after the final, nothing lost or repeated


class _DroppingOpusRecognizer(recognizer_pb2_grpc.RecognizerServicer):
    """Like _DroppingRecognizer, for OGG_OPUS: decodes each stream with the server's decoder."""

    def __init__(self):
        self.streams: list[tuple[float, int, int]] = []  # offset, encoding, 16 kHz samples decoded

    def StreamingRecognize(self, request_iterator, context):
        from splitasr.audio.ogg_opus import OggOpusDecoder

        config = next(request_iterator).streaming_config
        decoder, samples = OggOpusDecoder(), 0
        first = not self.streams
        for request in request_iterator:
            samples += len(decoder(request.audio))
            if first and samples >= 16_000 * 1.5:
                self.streams.append((config.time_offset_seconds, config.config.encoding, samples))
                yield pb.StreamingRecognizeResponse(results=[pb.StreamingRecognitionResult(
                    transcript="one", is_final=True, start_seconds=0.0, result_end_seconds=1.0)])
                context.abort(grpc.StatusCode.UNAVAILABLE, "server restarting")
        samples += len(decoder(b"", last=True))  # a complete stream: headers first, end-of-stream page last
        self.streams.append((config.time_offset_seconds, config.config.encoding, samples))
        offset = config.time_offset_seconds
        yield pb.StreamingRecognizeResponse(results=[pb.StreamingRecognitionResult(
            transcript="two", is_final=True, start_seconds=offset, result_end_seconds=offset + samples / 16_000)])


def test_a_dropped_opus_stream_resumes_as_a_new_ogg_stream_of_the_rest():
    rate = 16_000
    signal = (3000 * np.sin(2 * np.pi * 300 * np.arange(3 * rate) / rate)).astype("<i2").tobytes()
    servicer = _DroppingOpusRecognizer()
    updates = _stream_through(servicer, [signal[i: i + 3200] for i in range(0, len(signal), 3200)],
                              sample_rate_hz=rate, codec="opus")
    assert [u.text for u in updates] == ["one", "two"]
    (offset1, encoding, _), (offset2, _, resent) = servicer.streams
    assert encoding == pb.OGG_OPUS and offset1 == 0.0 and offset2 == pytest.approx(1.0)
    assert resent == 2 * rate  # the 2 s after the final, as its own Ogg Opus stream, trimmed exactly
    assert updates[1].end == pytest.approx(3.0)
