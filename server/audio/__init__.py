"""Decode any uploaded audio to 16 kHz mono float32 samples; encode samples back to WAV.

Pure functions with no server state. PyAV (FFmpeg) demuxes and decodes frame by frame, channels are
averaged to mono, soxr resamples in streaming chunks, and every chunk is written straight into one
output buffer: sized from the header's duration (never past the limit) and grown in place when a
file runs longer than it said. Decoding stops with a clear error as soon as the decoded duration
passes ``max_seconds``, so memory is the output itself (4 bytes per 16 kHz sample, at most the limit)
plus a few frames, whatever the file claims or hides.
Everything a client can get wrong surfaces as :class:`~splitasr.errors.BadAudio` with a message
that names the cause; FFmpeg errors never escape as they are.
"""

from __future__ import annotations

import io
import os
import wave
from collections.abc import Iterator
from typing import BinaryIO

import av
import numpy as np
import soxr

from ..errors import BadAudio, InvalidInput

__all__ = [
    "DEFAULT_MAX_SECONDS",
    "MAX_CHANNELS",
    "MAX_INPUT_RATE_HZ",
    "MIN_INPUT_RATE_HZ",
    "SAMPLE_RATE_HZ",
    "decode_audio",
    "duration_seconds",
    "encode_wav_pcm16",
]

SAMPLE_RATE_HZ = 16_000
"""Rate of every decoded signal (what Whisper-style backbones expect)."""
MIN_INPUT_RATE_HZ = 4_000
MAX_INPUT_RATE_HZ = 384_000
MAX_CHANNELS = 32
DEFAULT_MAX_SECONDS = 3 * 3600.0

_SUPPORTED = "wav, flac, mp3, ogg, opus, webm, m4a"
# Only these demuxers may run. Probing raw bytes with every FFmpeg demuxer would let an upload
# that looks like an HLS playlist or a concat script make FFmpeg open other files or URLs.
_DEMUXERS = "wav,w64,flac,mp3,ogg,matroska,webm,mov,mp4,m4a,aac,aiff,caf"
_OPEN_OPTIONS = {"format_whitelist": _DEMUXERS}
# A header's duration can be an estimate (VBR MP3 without a Xing header), so only a clear
# overshoot is rejected before decoding; the exact count while decoding catches the rest.
_HEADER_SLACK_FRACTION = 0.05
_HEADER_SLACK_S = 1.0
# Output buffer size for a file whose header gives no duration (it grows from there).
_UNKNOWN_LENGTH_START_S = 60.0
_FIRST_BUFFER_MAX_S = 600.0
_GROWTH_STEP_S = 60
# Corrupt packets are skipped (the rest of the file is still useful) up to this many.
_MAX_BAD_PACKETS = 32
# Integer sample formats -> scale to [-1, 1); planar variants share the entry ("s16p" -> "s16").
_INT_SCALE = {"s16": 2.0**-15, "s32": 2.0**-31, "s64": 2.0**-63}


def decode_audio(
    source: bytes | bytearray | memoryview | str | os.PathLike[str],
    *,
    max_seconds: float = DEFAULT_MAX_SECONDS,
) -> np.ndarray:
    """Decode ``source`` (the file's bytes, or a path) to mono float32 samples at 16 kHz.

    Containers: wav/w64, flac, mp3, ogg (vorbis, opus, flac), webm/mkv, mp4/m4a, adts aac, aiff,
    caf, with any codec FFmpeg decodes in them; 4 kHz to 384 kHz; up to :data:`MAX_CHANNELS`
    channels, averaged. A truncated or partly corrupt stream yields whatever decodes. Samples are
    clipped to [-1, 1].

    Raises:
        BadAudio: empty input, unknown format, no audio stream, nothing decodable, non-finite
            samples, a rate or channel count out of range, or longer than ``max_seconds``
            (checked from the header when known, and again while decoding, so an over-long file
            is never decoded in full).
    """
    if not max_seconds > 0:
        raise InvalidInput(f"max_seconds must be positive, got {max_seconds}")
    with _open_source(source) as file:
        try:
            container = av.open(file, mode="r", options=_OPEN_OPTIONS, metadata_errors="ignore")
        except (av.FFmpegError, OSError, ValueError) as exc:
            # EOF while probing: the headers are there but the data stops before the first packet.
            reason = "the data ends too early (truncated?)" if isinstance(exc, EOFError) else _reason(exc)
            raise BadAudio(
                f"could not decode audio: {reason}; is it a supported format ({_SUPPORTED})?"
            ) from None
        with container:
            if not container.streams.audio:
                raise BadAudio(f"no audio stream in the file (container: {container.format.name})")
            stream = container.streams.audio[0]
            _check_header(container, stream, max_seconds)
            try:
                return _decode_stream(container, stream, max_seconds)
            except av.FFmpegError as exc:  # a safety net: per-packet errors are handled inside
                raise BadAudio(f"could not decode audio: {_reason(exc)}") from None


def duration_seconds(samples: np.ndarray) -> float:
    """Length in seconds of a decoded (16 kHz) signal."""
    return len(samples) / SAMPLE_RATE_HZ


def encode_wav_pcm16(samples: np.ndarray, rate: int = SAMPLE_RATE_HZ) -> bytes:
    """Encode float samples in [-1, 1] as a 16-bit PCM WAV file.

    ``samples`` is 1-D (mono) or 2-D ``(frames, channels)``; values outside [-1, 1] are clipped.
    """
    data = np.asarray(samples, dtype=np.float32)
    if data.ndim == 1:
        data = data[:, None]
    if data.ndim != 2 or data.shape[1] < 1:
        raise InvalidInput(f"samples must be 1-D or (frames, channels), got shape {data.shape}")
    if not np.isfinite(data).all():
        raise InvalidInput("samples contain NaN or Inf")
    if not 1 <= int(rate) <= MAX_INPUT_RATE_HZ:
        raise InvalidInput(f"rate must be 1..{MAX_INPUT_RATE_HZ} Hz, got {rate}")
    pcm = np.round(np.clip(data, -1.0, 1.0) * 32767.0).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(data.shape[1])
        out.setsampwidth(2)
        out.setframerate(int(rate))
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()


def _open_source(source: bytes | bytearray | memoryview | str | os.PathLike[str]) -> BinaryIO:
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise BadAudio("audio is empty (0 bytes)")
        return io.BytesIO(source)
    # Paths are opened here, not by FFmpeg, so a "path" such as "http://..." is never a URL.
    path = os.fspath(source)
    try:
        if os.path.getsize(path) == 0:
            raise BadAudio(f"audio is empty (0 bytes): {path}")
        return open(path, "rb")  # closed by the caller's `with`
    except OSError as exc:
        raise BadAudio(f"cannot read audio file {path}: {exc.strerror or exc}") from None


def _reason(exc: BaseException) -> str:
    """FFmpeg's own words, without the '<none>' file name PyAV appends for in-memory input."""
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _check_rate_and_channels(rate: int, channels: int) -> None:
    if not MIN_INPUT_RATE_HZ <= rate <= MAX_INPUT_RATE_HZ:
        raise BadAudio(
            f"sample rate {rate} Hz is outside the accepted range {MIN_INPUT_RATE_HZ}..{MAX_INPUT_RATE_HZ} Hz"
        )
    if not 1 <= channels <= MAX_CHANNELS:
        raise BadAudio(f"audio has {channels} channels; 1..{MAX_CHANNELS} are accepted")


def _too_long(max_seconds: float) -> BadAudio:
    return BadAudio(f"audio is longer than the limit of {max_seconds:g} s; split it or send less")


def _check_header(container: av.container.InputContainer, stream: av.AudioStream, max_seconds: float) -> None:
    """Reject from the header alone what is certainly out of range, before decoding anything."""
    context = stream.codec_context
    if context.sample_rate:  # 0 when the header does not say; frames are checked anyway
        _check_rate_and_channels(context.sample_rate, max(context.channels, 1))
    declared = _declared_seconds(container, stream)
    if declared is not None and declared > max_seconds * (1 + _HEADER_SLACK_FRACTION) + _HEADER_SLACK_S:
        raise _too_long(max_seconds)


class _Output:
    """16 kHz float32 samples decoded so far, in one buffer (no list of pieces, no final concatenation).

    The buffer starts at the header's duration (one second more; at most 10 minutes and at most the
    limit) and grows by a quarter, at most a minute at a time, when a file runs longer.
    ``ndarray.resize`` grows and finally trims it in place (``realloc``, which moves pages rather than
    copying them for large buffers), so the peak stays within a minute of samples of the output.
    """

    def __init__(self, expected_seconds: float | None, max_seconds: float):
        self.limit = int(max_seconds * SAMPLE_RATE_HZ) + SAMPLE_RATE_HZ
        # a header can lie: trust it up to _FIRST_BUFFER_MAX_S (even unwritten pages count against
        # a host that does not overcommit memory), then grow as the samples really arrive
        first = min((expected_seconds or _UNKNOWN_LENGTH_START_S) + 1.0, _FIRST_BUFFER_MAX_S)
        self.buffer = np.empty(min(int(first * SAMPLE_RATE_HZ), self.limit), dtype=np.float32)
        self.size = 0

    def append(self, samples: np.ndarray) -> None:
        end = self.size + len(samples)
        if end > len(self.buffer):
            # small steps: resize zero-fills what it adds, so every added page is resident at once
            step = min(len(self.buffer) // 4, _GROWTH_STEP_S * SAMPLE_RATE_HZ)
            self.buffer.resize(min(max(end, len(self.buffer) + step), max(self.limit, end)), refcheck=False)
        self.buffer[self.size:end] = samples
        self.size = end

    def result(self) -> np.ndarray:
        self.buffer.resize(self.size, refcheck=False)
        return self.buffer


def _declared_seconds(container: av.container.InputContainer, stream: av.AudioStream) -> float | None:
    """The duration the header states (the longest of the stream's and the container's), if any."""
    declared = []
    if stream.duration is not None and stream.time_base is not None:
        declared.append(float(stream.duration * stream.time_base))
    if container.duration is not None:
        declared.append(container.duration / av.time_base)
    return max(declared) if declared else None


def _decode_stream(
    container: av.container.InputContainer, stream: av.AudioStream, max_seconds: float
) -> np.ndarray:
    errors: list[str] = []
    output = _Output(_declared_seconds(container, stream), max_seconds)
    resampler: soxr.ResampleStream | None = None
    rate = 0
    seconds_before_run = 0.0  # duration of earlier runs at other rates (chained Ogg can switch)
    samples_in_run = 0
    for frame in _frames(container, stream, errors):
        _check_rate_and_channels(frame.sample_rate, frame.layout.nb_channels)
        if frame.sample_rate != rate:
            if resampler is not None:
                output.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
            seconds_before_run += samples_in_run / rate if rate else 0.0
            rate, samples_in_run = frame.sample_rate, 0
            resampler = None if rate == SAMPLE_RATE_HZ else soxr.ResampleStream(rate, SAMPLE_RATE_HZ, 1)
        mono = _to_mono(frame)
        samples_in_run += len(mono)
        if seconds_before_run + samples_in_run / rate > max_seconds:
            raise _too_long(max_seconds)
        output.append(mono if resampler is None else resampler.resample_chunk(mono))
    if resampler is not None:
        output.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    samples = output.result()
    if samples.size == 0:
        if errors:
            raise BadAudio(f"could not decode any audio: the stream is truncated or corrupt ({errors[0]})")
        raise BadAudio("audio contains no samples (0 decoded; is the file cut short or corrupt?)")
    # Resampling can overshoot full scale a little, and float WAVs may exceed it on purpose.
    return np.clip(samples, -1.0, 1.0, out=samples)


def _frames(
    container: av.container.InputContainer, stream: av.AudioStream, errors: list[str]
) -> Iterator[av.AudioFrame]:
    """Decoded frames of ``stream``; corrupt packets are skipped and their errors collected."""
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.FFmpegError as exc:  # the container itself is cut or broken: keep what we have
            errors.append(_reason(exc))
            yield from _flush(stream, errors)
            return
        try:
            yield from packet.decode()
        except av.FFmpegError as exc:
            errors.append(_reason(exc))
            if len(errors) > _MAX_BAD_PACKETS:
                return


def _flush(stream: av.AudioStream, errors: list[str]) -> Iterator[av.AudioFrame]:
    try:
        yield from stream.codec_context.decode(None)
    except av.FFmpegError as exc:
        errors.append(_reason(exc))


def _to_mono(frame: av.AudioFrame) -> np.ndarray:
    """One frame as float32 in [-1, 1], channels averaged (a plain mean, not FFmpeg's matrix)."""
    channels = frame.layout.nb_channels
    data = frame.to_ndarray()
    planar = frame.format.is_planar
    base = frame.format.name.removesuffix("p") if planar else frame.format.name
    if base == "u8":
        floats = (data.astype(np.float32) - 128.0) / 128.0
    elif base in _INT_SCALE:
        floats = data.astype(np.float32) * np.float32(_INT_SCALE[base])
    else:  # flt / dbl
        floats = data.astype(np.float32, copy=False)
    # Planar is (channels, n); packed is one interleaved row. A matrix-vector product averages
    # the channels several times faster than ndarray.mean over a strided axis.
    weights = np.full(channels, 1.0 / channels, dtype=np.float32)
    mono = weights @ floats if planar else floats.reshape(-1, channels) @ weights
    if not np.isfinite(mono).all():
        raise BadAudio("audio contains non-finite samples (NaN or Inf)")
    return np.ascontiguousarray(mono, dtype=np.float32)
