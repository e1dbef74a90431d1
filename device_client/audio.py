"""Audio on the device: files and microphone to 16-bit mono PCM chunks.

WAV is read with the standard library's ``wave``; sample conversion and mixing to mono use numpy
(a minute of 48 kHz stereo takes milliseconds, against seconds in pure Python), imported only when
a file is read. FLAC, OGG and others use ``soundfile`` when it is installed; the microphone uses
``sounddevice``. The server resamples, so PCM is sent at the source's own rate.
"""

from __future__ import annotations

import time
import wave
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import DeviceError

if TYPE_CHECKING:
    import numpy as np

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

    def resampled(self, rate_hz: int) -> Pcm:
        """The same recording at ``rate_hz`` (band-limited; for codecs that take fixed rates)."""
        import numpy as np

        from .opus import resample_pcm

        return _pcm(resample_pcm(np.frombuffer(self.data, dtype="<i2"), self.rate_hz, rate_hz), rate_hz)


def _mix_to_mono(samples: np.ndarray, channels: int) -> np.ndarray:
    """Interleaved int16 frames -> their mean per frame (rounded down), int16."""
    import numpy as np

    if channels == 1:
        return samples
    frames = samples[: len(samples) // channels * channels].reshape(-1, channels)
    return (frames.astype(np.int32).sum(axis=1) // channels).astype(np.int16)


def _to_int16(raw: bytes, width: int) -> np.ndarray:
    """Little-endian integer PCM of any common width -> int16 samples (the top 16 bits)."""
    import numpy as np

    if width == 1:  # unsigned 8-bit
        return ((np.frombuffer(raw, dtype=np.uint8).astype(np.int16) - 128) << 8).astype(np.int16)
    if width not in (2, 3, 4):
        raise DeviceError(f"unsupported WAV sample width: {width} bytes")
    samples = np.frombuffer(raw[: len(raw) // width * width], dtype=np.uint8).reshape(-1, width)
    return np.ascontiguousarray(samples[:, width - 2:]).view("<i2").reshape(-1).astype(np.int16)


def _pcm(samples: np.ndarray, rate: int) -> Pcm:
    return Pcm(samples.astype("<i2").tobytes(), int(rate))


def _read_wav(path: Path) -> Pcm:
    try:
        with wave.open(str(path), "rb") as f:
            channels, width, rate = f.getnchannels(), f.getsampwidth(), f.getframerate()
            raw = f.readframes(f.getnframes())
    except (wave.Error, EOFError) as exc:
        raise DeviceError(f"{path}: not a PCM WAV file ({exc})") from None
    return _pcm(_mix_to_mono(_to_int16(raw, width), channels), rate)


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
    return _pcm(_mix_to_mono(data.reshape(-1), data.shape[1]), rate)


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
