"""Opus on the device: 16-bit mono PCM chunks -> an Ogg Opus stream (RFC 7845), page by page.

A stream sent as ``OGG_OPUS`` costs about a ninth of LINEAR16 (24 kbit/s against 256 kbit/s). The
encoder is libsndfile's, shipped inside the ``soundfile`` wheel (libsndfile 1.2 with libopus and
libogg built in, no system library): ``pip install "splitasr[opus]"``. libsndfile writes the
OpusHead and OpusTags header pages, then audio pages; it is told to end a page every
``page_ms`` (``SFC_SET_OGG_PAGE_LATENCY_MS``), so each chunk of a live stream leaves at once instead
of waiting for a page of about a second (libsndfile's default). Opus works in 20 ms frames; the
audio of a chunk that does not fill its last frame goes with the next chunk, and ``close`` pads the
last frame and writes the end-of-stream page (its granule position trims the padding).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from .errors import DeviceError

if TYPE_CHECKING:
    import numpy as np

# The input rates libopus encodes (RFC 6716, section 2); anything else is resampled first.
OPUS_RATES_HZ = (8_000, 12_000, 16_000, 24_000, 48_000)
# bit/s: no word lost against LINEAR16 on the real-speech fixtures, ~0.22 MB per audio minute
# (docs/results.md: 16 and 20 kbit/s each lost words there)
DEFAULT_BITRATE = 24_000
_SFC_SET_OGG_PAGE_LATENCY_MS = 0x1302  # libsndfile's sndfile.h (1.1 and later)
_MIN_BITRATE, _MAX_BITRATE = 6_000, 256_000  # libsndfile's range for SFC_SET_COMPRESSION_LEVEL (per channel)


def _soundfile():
    try:
        import soundfile
    except ImportError:
        raise DeviceError('sending Opus needs the opus extra: pip install "splitasr[opus]" '
                          "(or stream with --codec linear16)") from None
    return soundfile


class _Sink(io.RawIOBase):
    """The file libsndfile writes to: hands out what was written since the last ``take``.
    libsndfile writes an Ogg stream front to back; a write before the handed-out bytes would be a bug."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._base = 0  # stream offset of self._data[0]
        self._pos = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def write(self, b) -> int:
        if self._pos < self._base:
            raise OSError("the Opus encoder rewrote bytes already sent")
        start = self._pos - self._base
        data = bytes(b)
        self._data[start: start + len(data)] = data
        self._pos += len(data)
        return len(data)

    def read(self, size: int = -1) -> bytes:
        return b""  # a stream being written is never read back

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        end = self._base + len(self._data)
        self._pos = {io.SEEK_SET: offset, io.SEEK_CUR: self._pos + offset, io.SEEK_END: end + offset}[whence]
        return self._pos

    def tell(self) -> int:
        return self._pos

    def take(self) -> bytes:
        data = bytes(self._data)
        self._base += len(self._data)
        self._data.clear()
        return data


class OggOpusEncoder:
    """``encode(pcm)`` -> the Ogg bytes ready so far (headers first); ``close()`` -> the rest.

    ``rate_hz`` must be one of :data:`OPUS_RATES_HZ`; ``bitrate`` in bit/s (6000..256000)."""

    def __init__(self, rate_hz: int = 16_000, bitrate: int = DEFAULT_BITRATE, page_ms: float = 20.0):
        if rate_hz not in OPUS_RATES_HZ:
            raise DeviceError(f"Opus encodes audio at {', '.join(map(str, OPUS_RATES_HZ))} Hz, not {rate_hz} Hz "
                              "(resample first, or send LINEAR16)")
        if not _MIN_BITRATE <= bitrate <= _MAX_BITRATE:
            raise DeviceError(f"Opus bitrate must be {_MIN_BITRATE}..{_MAX_BITRATE} bit/s, got {bitrate}")
        soundfile = _soundfile()
        self.rate_hz = rate_hz
        self._sink = _Sink()
        # libsndfile maps compression level q to (1 - q) * 250000 + 6000 bit/s per channel
        level = 1.0 - (bitrate - _MIN_BITRATE) / (_MAX_BITRATE - _MIN_BITRATE)
        self._file = soundfile.SoundFile(self._sink, "w", samplerate=rate_hz, channels=1, format="OGG",
                                         subtype="OPUS", compression_level=min(max(level, 0.0), 1.0))
        latency = soundfile._ffi.new("double*", float(page_ms))
        # soundfile's API has no page latency: the command goes to libsndfile through soundfile's own
        # handle (pinned version; tests/unit/audio/test_ogg_opus.py checks that pages leave per chunk)
        soundfile._snd.sf_command(self._file._file, _SFC_SET_OGG_PAGE_LATENCY_MS, latency,
                                  soundfile._ffi.sizeof("double"))
        self.closed = False
        self._carry = b""

    def encode(self, pcm: bytes | np.ndarray) -> bytes:
        """16-bit little-endian mono samples (bytes) or int16 samples -> Ogg bytes (may be b"")."""
        import numpy as np

        if self.closed:
            raise DeviceError("the Opus stream is closed")
        if isinstance(pcm, (bytes, bytearray, memoryview)):
            data = self._carry + bytes(pcm)  # a chunk may end inside a sample: its byte waits
            usable = len(data) - len(data) % 2
            samples, self._carry = np.frombuffer(data[:usable], dtype="<i2"), data[usable:]
        else:
            samples = pcm
        if len(samples):
            self._file.write(np.asarray(samples, dtype=np.int16))
        return self._sink.take()

    def close(self) -> bytes:
        """The last page(s), end-of-stream flag set."""
        if self.closed:
            return b""
        self.closed = True
        self._file.close()
        return self._sink.take()


def resample_pcm(samples: np.ndarray, rate_hz: int, to_hz: int = 16_000) -> np.ndarray:
    """int16 samples of a whole recording at ``rate_hz`` -> int16 at ``to_hz``, band-limited (FFT)."""
    import numpy as np

    if rate_hz == to_hz or not len(samples):
        return samples
    n_out = max(1, round(len(samples) * to_hz / rate_hz))
    spectrum = np.fft.rfft(samples.astype(np.float64))
    keep = min(len(spectrum), n_out // 2 + 1)
    out = np.fft.irfft(spectrum[:keep], n_out) * (n_out / len(samples))
    return np.clip(np.round(out), -32768, 32767).astype(np.int16)
