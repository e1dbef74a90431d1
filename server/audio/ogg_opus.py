"""An Ogg Opus stream (RFC 7845) decoded as its bytes arrive: chunks in, float32 16 kHz samples out.

The pages (RFC 3533) are parsed here, each checked against its CRC, its stream serial number and its
sequence number, so a corrupt, reordered or cut stream is refused at the page where it goes wrong
(gRPC already delivers the bytes intact and in order: any mismatch is the sender's). The packets
go to libopus through PyAV's codec context one by one; nothing waits for the end of the stream. The
first packet is the OpusHead (channels, pre-skip), the second the OpusTags (skipped); the pre-skip
is dropped from the front (by FFmpeg's decoder, which reads it from the OpusHead) and the
end-of-stream page's granule position trims the padding of the last frame (RFC 7845, section 4). libopus decodes at 48 kHz; soxr resamples to 16 kHz.

A stream that stops between two pages without an end-of-stream page is accepted as it is (a live
source may just stop); one that stops inside a page or inside a packet is truncated: refused.
"""

from __future__ import annotations

import struct
import zlib

import av
import numpy as np
import soxr

from ..errors import BadAudio
from . import SAMPLE_RATE_HZ

OPUS_RATE_HZ = 48_000  # granule positions and libopus output are always at 48 kHz
MAX_PACKET_BYTES = 128 * 1024  # an Opus audio packet is at most ~8 KB; OpusTags may carry a picture
MAX_CHUNK_SECONDS = 60.0  # one chunk may not decode to more (a packet of 120 ms costs 3 bytes)

_HEADER = struct.Struct("<4sBBqIIIB")  # capture, version, flags, granule, serial, sequence, crc, segments
_CONTINUED, _BOS, _EOS = 0x01, 0x02, 0x04
_REVERSED = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def ogg_crc(data: bytes) -> int:
    """Ogg's CRC-32 (polynomial 0x04c11db7, not reflected, initial value 0, no final xor; RFC 3533
    section 6), computed by zlib's reflected CRC-32 on bit-reversed bytes."""
    reflected = zlib.crc32(data.translate(_REVERSED), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{reflected:032b}"[::-1], 2)


class OggOpusDecoder:
    """``decoder(chunk)`` -> the samples decoded so far; ``decoder(b"", last=True)`` at the end of
    the stream (refuses a truncated one). Raises :class:`BadAudio` naming what is wrong."""

    def __init__(self, max_seconds: float | None = None):
        self._buffer = bytearray()
        self._packet = bytearray()  # a packet continued across pages
        self._serial: int | None = None
        self._sequence = -1
        self._packets = 0  # packets completed: 0 = expecting OpusHead, 1 = OpusTags, then audio
        self._ended = False
        self._codec: av.CodecContext | None = None
        self._channels = 1
        self._decoded = 0  # 48 kHz samples decoded (after the pre-skip), for the end trim
        self._pre_skip = 0
        self._max_samples = None if max_seconds is None else int(max_seconds * OPUS_RATE_HZ)
        self._resampler = soxr.ResampleStream(OPUS_RATE_HZ, SAMPLE_RATE_HZ, 1, dtype="float32")
        self._offset = 0  # stream byte offset of self._buffer[0], for messages

    # pages -----------------------------------------------------------------------------------------
    def __call__(self, data: bytes, last: bool = False) -> np.ndarray:
        self._buffer += data
        out: list[np.ndarray] = []
        chunk_samples = 0
        while (page := self._next_page()) is not None:
            samples = self._page(*page)
            chunk_samples += len(samples)
            if chunk_samples > MAX_CHUNK_SECONDS * OPUS_RATE_HZ:
                raise BadAudio(f"Ogg Opus: one chunk decodes to more than {MAX_CHUNK_SECONDS:g} s of audio; "
                               "send the stream as it is recorded (chunks of 20 ms to 1 s)")
            out.append(samples)
        if last:
            if self._buffer:
                raise BadAudio(f"Ogg Opus stream is truncated: it ends inside a page (byte {self._offset}, "
                               f"{len(self._buffer)} bytes of an incomplete page)")
            if self._packet:
                raise BadAudio("Ogg Opus stream is truncated: its last packet continues on a page that never came")
            if self._packets == 1:
                raise BadAudio("Ogg Opus stream is truncated: it ends after its OpusHead, before OpusTags")
        audio = np.concatenate(out) if out else np.zeros(0, np.float32)
        return self._resampler.resample_chunk(audio, last=last)

    def _next_page(self):
        """(flags, granule, segment lengths, body) of the next complete page, or None."""
        buffer = self._buffer
        if len(buffer) < _HEADER.size:
            if buffer and not b"OggS".startswith(bytes(buffer[:4])):
                self._bad_capture()
            return None
        capture, version, flags, granule, serial, sequence, crc, count = _HEADER.unpack_from(buffer)
        if capture != b"OggS":
            self._bad_capture()
        if version != 0:
            raise BadAudio(f"Ogg page at byte {self._offset}: stream structure version {version} (only 0 exists)")
        size = _HEADER.size + count
        if len(buffer) < size:
            return None
        lengths = buffer[_HEADER.size: size]
        end = size + sum(lengths)
        if len(buffer) < end:
            return None
        page = bytes(buffer[:end])
        if ogg_crc(page[:22] + b"\0\0\0\0" + page[26:]) != crc:
            raise BadAudio(f"Ogg page {sequence} at byte {self._offset}: CRC mismatch (the stream is corrupt)")
        if self._ended:
            raise BadAudio(f"Ogg Opus: data after the end-of-stream page (byte {self._offset})")
        if self._serial is None:
            if not flags & _BOS:
                raise BadAudio("Ogg Opus stream must start with a beginning-of-stream page (its OpusHead)")
            self._serial = serial
        elif serial != self._serial:
            raise BadAudio(f"Ogg page at byte {self._offset} belongs to another logical stream (serial {serial}); "
                           "a stream carries one Opus stream, unchained")
        if sequence != self._sequence + 1:
            raise BadAudio(f"Ogg page at byte {self._offset}: sequence number {sequence}, expected "
                           f"{self._sequence + 1} (pages are missing)")
        if bool(flags & _CONTINUED) != bool(self._packet):
            raise BadAudio(f"Ogg page {sequence}: continuation flag does not match the previous page")
        self._sequence = sequence
        del buffer[:end]
        self._offset += end
        return flags, granule, bytes(lengths), page[size:]

    def _bad_capture(self):
        raise BadAudio(f"not an Ogg stream at byte {self._offset}: expected the capture pattern 'OggS' "
                       "(encoding OGG_OPUS takes an Ogg Opus stream, RFC 7845)")

    def _page(self, flags: int, granule: int, lengths: bytes, body: bytes) -> np.ndarray:
        """The samples of the packets that end on this page (the last page's padding trimmed)."""
        parts, position = [], 0
        for length in lengths:
            self._packet += body[position: position + length]
            position += length
            if len(self._packet) > MAX_PACKET_BYTES:
                raise BadAudio(f"Ogg Opus: a packet longer than {MAX_PACKET_BYTES} bytes")
            if length < 255:
                packet, self._packet = bytes(self._packet), bytearray()
                samples = self._on_packet(packet)
                if samples is not None:
                    parts.append(samples)
        audio = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        if flags & _EOS:
            self._ended = True
            if self._packet:
                raise BadAudio("Ogg Opus: the end-of-stream page ends inside a packet")
            # the last granule position counts the pre-skip; what was decoded beyond it is padding
            excess = min(self._decoded - max(granule - self._pre_skip, 0), len(audio))
            if granule >= 0 and excess > 0:
                audio = audio[: len(audio) - excess]
                self._decoded -= excess
        return audio

    # packets ---------------------------------------------------------------------------------------
    def _on_packet(self, packet: bytes) -> np.ndarray | None:
        index = self._packets
        self._packets += 1
        if index == 0:
            self._open(packet)
            return None
        if index == 1:
            if not packet.startswith(b"OpusTags"):
                raise BadAudio("Ogg Opus: the second packet must be OpusTags (RFC 7845, section 5.2)")
            return None
        return self._decode(packet, index)

    def _open(self, head: bytes) -> None:
        if len(head) < 19 or not head.startswith(b"OpusHead"):
            raise BadAudio("Ogg Opus: the first packet must be an OpusHead of 19 bytes or more (RFC 7845, "
                           "section 5.1); is this Ogg Vorbis or another codec?")
        version, channels, pre_skip, _rate, _gain, family = struct.unpack_from("<BBHIhB", head, 8)
        if version >> 4 != 0:
            raise BadAudio(f"Ogg Opus: OpusHead version {version} is not supported (major version 0 only)")
        if channels not in (1, 2) or family != 0:
            raise BadAudio(f"Ogg Opus: {channels} channels with mapping family {family}; send mono or stereo "
                           "(mapping family 0)")
        codec = av.CodecContext.create("libopus", "r")
        codec.extradata = head
        self._codec, self._channels = codec, channels
        self._pre_skip = pre_skip  # FFmpeg's libopus decoder drops it (from the OpusHead); the end trim counts it

    def _decode(self, packet: bytes, index: int) -> np.ndarray:
        try:
            frames = self._codec.decode(av.Packet(packet))
        except av.FFmpegError as exc:
            raise BadAudio(f"Ogg Opus: packet {index} could not be decoded ({exc})") from None
        parts = []
        for frame in frames:
            samples = frame.to_ndarray().astype(np.float32)
            if frame.format.name.startswith("s16"):
                samples /= 32768.0
            samples = samples.reshape(-1, self._channels) if not frame.format.is_planar else samples.T
            parts.append(samples.mean(axis=1) if self._channels > 1 else samples.reshape(-1))
        audio = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        self._decoded += len(audio)
        if self._max_samples is not None and self._decoded > self._max_samples:
            raise BadAudio(f"stream is longer than the limit of {self._max_samples / OPUS_RATE_HZ:g} s")
        return audio
