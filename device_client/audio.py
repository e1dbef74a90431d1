"""Audio on the device: files and microphone to 16-bit mono PCM chunks, with the standard library.

WAV needs nothing else; FLAC, OGG and others use ``soundfile`` when it is installed; the microphone
uses ``sounddevice``. The server resamples, so PCM is sent at the source's own rate.
"""

from __future__ import annotations

import array
import sys
import time
import wave
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import DeviceError

SAMPLE_WIDTH_BYTES = 2
DEFAULT_CHUNK_MS = 100
MIC_RATE_HZ = 16_000


@dataclass(frozen=True)
class Pcm:
    """Mono signed 16-bit little-endian samples."""

    data: bytes
    rate_hz: int

    @property
    def seconds(self) -> float:
        return len(self.data) / SAMPLE_WIDTH_BYTES / self.rate_hz


def _mix_to_mono(samples: array.array, channels: int) -> array.array:
    if channels == 1:
        return samples
    frames = [samples[c::channels] for c in range(channels)]
    return array.array("h", (sum(f) // channels for f in zip(*frames)))


def _to_int16(raw: bytes, width: int) -> array.array:
    """Little-endian integer PCM of any common width -> native int16 samples (the top 16 bits)."""
    if width == 1:  # unsigned 8-bit
        return array.array("h", ((b - 128) << 8 for b in raw))
    if width not in (2, 3, 4):
        raise DeviceError(f"unsupported WAV sample width: {width} bytes")
    if width > 2:
        top = bytearray()
        for i in range(0, len(raw) - width + 1, width):
            top += raw[i + width - 2: i + width]
        raw = bytes(top)
    samples = array.array("h", raw)
    if sys.byteorder == "big":
        samples.byteswap()
    return samples


def _little_endian(samples: array.array) -> bytes:
    if sys.byteorder == "big":
        samples = array.array("h", samples)
        samples.byteswap()
    return samples.tobytes()


def _read_wav(path: Path) -> Pcm:
    try:
        with wave.open(str(path), "rb") as f:
            channels, width, rate = f.getnchannels(), f.getsampwidth(), f.getframerate()
            raw = f.readframes(f.getnframes())
    except (wave.Error, EOFError) as exc:
        raise DeviceError(f"{path}: not a PCM WAV file ({exc})") from None
    return Pcm(_little_endian(_mix_to_mono(_to_int16(raw, width), channels)), rate)


def _read_with_soundfile(path: Path) -> Pcm:
    try:
        import soundfile
    except ImportError:
        raise DeviceError(
            f"{path}: reading {path.suffix or 'this'} files needs the 'soundfile' package "
            "(pip install soundfile); WAV works without it"
        ) from None
    try:
        data, rate = soundfile.read(str(path), dtype="int16", always_2d=True)
    except Exception as exc:  # noqa: BLE001 - soundfile raises its own and RuntimeError
        raise DeviceError(f"{path}: cannot decode audio ({exc})") from None
    mono = data.mean(axis=1).astype("<i2") if data.shape[1] > 1 else data[:, 0].astype("<i2")
    return Pcm(mono.tobytes(), int(rate))


def read_pcm(path: str | Path) -> Pcm:
    """Read an audio file as mono 16-bit PCM at its own rate."""
    path = Path(path)
    if not path.is_file():
        raise DeviceError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(12)
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return _read_wav(path)
    return _read_with_soundfile(path)


def chunks(pcm: Pcm, chunk_ms: int = DEFAULT_CHUNK_MS) -> Iterator[bytes]:
    """Split PCM into chunks of ``chunk_ms`` milliseconds (the last may be shorter)."""
    size = max(1, pcm.rate_hz * chunk_ms // 1000) * SAMPLE_WIDTH_BYTES
    for start in range(0, len(pcm.data), size):
        yield pcm.data[start: start + size]


def paced(pieces: Iterable[bytes], rate_hz: int) -> Iterator[bytes]:
    """Yield each chunk when its audio would have been recorded (real-time playback of a file)."""
    start = time.monotonic()
    sent_seconds = 0.0
    for piece in pieces:
        sent_seconds += len(piece) / SAMPLE_WIDTH_BYTES / rate_hz
        delay = start + sent_seconds - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield piece


def microphone(rate_hz: int = MIC_RATE_HZ, chunk_ms: int = DEFAULT_CHUNK_MS,
               seconds: float | None = None) -> Iterator[bytes]:
    """Chunks from the default microphone (needs ``sounddevice``) until ``seconds`` or Ctrl-C."""
    try:
        import sounddevice
    except (ImportError, OSError):
        raise DeviceError("microphone input needs the 'sounddevice' package (pip install sounddevice)") from None
    frames = rate_hz * chunk_ms // 1000
    total = 0
    with sounddevice.RawInputStream(samplerate=rate_hz, channels=1, dtype="int16", blocksize=frames) as stream:
        try:
            while seconds is None or total < seconds * rate_hz:
                data, _overflowed = stream.read(frames)
                total += frames
                yield bytes(data)
        except KeyboardInterrupt:
            return
