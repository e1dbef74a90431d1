"""Opus on both ends without a server: the device's Ogg Opus encoder (soundfile's libsndfile) and the
server's incremental Ogg Opus decoder (own page parser + PyAV's libopus)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitasr.audio import decode_audio
from splitasr.audio.ogg_opus import OggOpusDecoder, ogg_crc
from splitasr.errors import BadAudio
from splitasr_device import DeviceError
from splitasr_device.opus import OggOpusEncoder, resample_pcm


def _speech(real_speech, index: int = 0) -> np.ndarray:
    return (decode_audio(real_speech[index]["path"]) * 32767).astype(np.int16)


def _encode(samples: np.ndarray, chunk: int = 1600, **kwargs) -> list[bytes]:
    encoder = OggOpusEncoder(16_000, **kwargs)
    pieces = [encoder.encode(samples[i: i + chunk].tobytes()) for i in range(0, len(samples), chunk)]
    return pieces + [encoder.close()]


def _pages(stream: bytes) -> list[tuple[int, int, bytes]]:
    """(flags, granule, page bytes) of each page, parsed independently of the decoder."""
    pages, at = [], 0
    while at < len(stream):
        assert stream[at: at + 4] == b"OggS"
        flags, granule = stream[at + 5], struct.unpack_from("<q", stream, at + 6)[0]
        count = stream[at + 26]
        end = at + 27 + count + sum(stream[at + 27: at + 27 + count])
        pages.append((flags, granule, stream[at:end]))
        at = end
    return pages


def test_the_encoder_sends_headers_then_a_page_for_every_chunk(real_speech):
    samples = _speech(real_speech)
    pieces = _encode(samples)
    assert pieces[0].startswith(b"OggS") and b"OpusHead" in pieces[0] and b"OpusTags" in pieces[0]
    # live: every 100 ms chunk leaves as Ogg data at once (libsndfile's default page is ~1 s)
    assert all(pieces[1:]), [len(p) for p in pieces]
    pages = _pages(b"".join(pieces))
    assert pages[0][0] & 0x02 and pages[-1][0] & 0x04, "first page begins the stream, last ends it"
    # RFC 7845 section 4: the last granule position = pre-skip + the samples at 48 kHz
    pre_skip = struct.unpack_from("<H", pieces[0], pieces[0].index(b"OpusHead") + 10)[0]
    assert pages[-1][1] - pre_skip == len(samples) * 3
    assert all(ogg_crc(p[:22] + b"\0\0\0\0" + p[26:]) == struct.unpack_from("<I", p, 22)[0] for *_, p in pages)


def test_bitrate_sets_the_bytes_per_minute(real_speech):
    samples = np.concatenate([_speech(real_speech, i) for i in range(3)])
    minutes = len(samples) / 16_000 / 60
    for bitrate in (12_000, 16_000, 24_000):
        size = sum(map(len, _encode(samples, bitrate=bitrate)))
        per_minute = size / minutes
        # the bitrate's bytes per minute, plus Ogg page and header overhead, within VBR's wander
        assert 0.7 * bitrate * 60 / 8 < per_minute < 1.35 * bitrate * 60 / 8 + 20_000, (bitrate, per_minute)
    assert sum(map(len, _encode(samples))) / minutes < 0.25e6  # the default: under 0.25 MB per audio minute


def test_server_decoder_gives_back_the_audio_in_step_with_the_original(real_speech):
    samples = _speech(real_speech)
    stream = b"".join(_encode(samples))
    whole = OggOpusDecoder()(stream, last=True)
    decoder = OggOpusDecoder()
    pieces = [decoder(stream[i: i + 97]) for i in range(0, len(stream), 97)] + [decoder(b"", last=True)]
    trickled = np.concatenate(pieces)
    assert len(whole) == len(trickled) == len(samples), "pre-skip dropped, padding trimmed"
    assert np.array_equal(whole, trickled), "pieces need not follow page boundaries"
    original = samples / 32768.0
    correlation = float(np.dot(whole, original) / np.linalg.norm(whole) / np.linalg.norm(original))
    assert correlation > 0.9, "no time shift: the decoded speech lines up with what was recorded"
    # FFmpeg's demuxer (used for files) reads the same samples
    assert len(decode_audio(stream)) == len(samples)


def test_chunks_may_end_inside_a_sample(real_speech):
    pcm = _speech(real_speech, 1).tobytes()
    encoder = OggOpusEncoder(16_000)
    stream = b"".join([encoder.encode(pcm[i: i + 333]) for i in range(0, len(pcm), 333)] + [encoder.close()])
    assert len(OggOpusDecoder()(stream, last=True)) == len(pcm) // 2


def test_decoder_output_starts_before_the_stream_ends(real_speech):
    stream = b"".join(_encode(_speech(real_speech)))
    decoder = OggOpusDecoder()
    assert len(decoder(stream[: len(stream) // 2])) > 16_000, "decoded as it arrives"


@pytest.mark.parametrize(("damage", "message"), [
    (lambda s: s[:200] + bytes([s[200] ^ 0x40]) + s[201:], "CRC mismatch"),
    (lambda s: s[:-5], "truncated: it ends inside a page"),
    (lambda s: b"\x01\x02" * 800, "not an Ogg stream at byte 0"),
    (lambda s: s[:4] + b"\x01" + s[5:], "stream structure version 1"),
    (lambda s: s[: _pages(s)[0][2].__len__()], "truncated: it ends after its OpusHead"),
])
def test_damaged_streams_are_refused_naming_what_is_wrong(real_speech, damage, message):
    stream = b"".join(_encode(_speech(real_speech, 1)))
    with pytest.raises(BadAudio, match=message):
        decoder = OggOpusDecoder()
        for i in range(0, len(damage(stream)), 400):
            decoder(damage(stream)[i: i + 400])
        decoder(b"", last=True)


def test_a_missing_page_is_refused(real_speech):
    stream = b"".join(_encode(_speech(real_speech, 1)))
    pages = [p for *_, p in _pages(stream)]
    with pytest.raises(BadAudio, match="sequence number 4, expected 3"):
        OggOpusDecoder()(b"".join(pages[:3] + pages[4:]), last=True)


def test_a_chunk_that_decodes_to_too_much_audio_is_refused():
    # valid pages of 2-byte packets that each stand for 120 ms: ~65 min of audio in 64 KiB
    head_pages = [p for *_, p in _pages(_encode(np.zeros(1600, np.int16))[0])][:2]  # OpusHead, OpusTags

    def page(seq, packets):
        lacing = bytes([len(packets[0])] * len(packets))
        body = b"".join(packets)
        header = struct.pack("<4sBBqIIIB", b"OggS", 0, 0, 0, struct.unpack_from("<I", head_pages[0], 14)[0],
                             seq, 0, len(packets)) + lacing
        raw = header + body
        return raw[:22] + struct.pack("<I", ogg_crc(raw)) + raw[26:]
    packet = bytes([0b11111011, 0x06])  # RFC 6716 3.2.5: CELT 20 ms frames, code 3, 6 empty frames (lost: PLC)
    flood = b"".join(page(2 + i, [packet] * 255) for i in range(60))
    with pytest.raises(BadAudio, match="more than 60 s of audio"):
        OggOpusDecoder()(b"".join(head_pages) + flood)


def test_encoder_refuses_rates_and_bitrates_opus_does_not_take():
    with pytest.raises(DeviceError, match="not 44100 Hz"):
        OggOpusEncoder(44_100)
    with pytest.raises(DeviceError, match="6000..256000"):
        OggOpusEncoder(16_000, bitrate=1_000)


def test_resampling_keeps_the_length_and_the_tone():
    rate = 44_100
    tone = (10_000 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)).astype(np.int16)
    out = resample_pcm(tone, rate, 16_000)
    assert len(out) == 16_000
    expected = 10_000 * np.sin(2 * np.pi * 440 * np.arange(16_000) / 16_000)
    assert np.abs(out[100:-100] - expected[100:-100]).max() < 150


_STREAM: dict[str, bytes] = {}


def _small_stream() -> bytes:
    if "s" not in _STREAM:
        tone = (6000 * np.sin(2 * np.pi * 220 * np.arange(8000) / 16_000)).astype(np.int16)
        _STREAM["s"] = b"".join(_encode(tone))
    return _STREAM["s"]


@settings(max_examples=60, deadline=None, database=None)
@given(st.data())
def test_any_flipped_byte_is_refused_and_any_cut_inside_a_page_too(data):
    stream = _small_stream()
    at = data.draw(st.integers(0, len(stream) - 1))
    bit = data.draw(st.integers(0, 7))
    flipped = stream[:at] + bytes([stream[at] ^ (1 << bit)]) + stream[at + 1:]
    with pytest.raises(BadAudio):
        OggOpusDecoder()(flipped, last=True)
    cut = data.draw(st.integers(1, len(stream) - 1))
    boundaries = np.cumsum([len(p) for *_, p in _pages(stream)]).tolist()
    if cut in boundaries[1:]:  # a stream that stops between pages (after its headers) is taken as it is
        assert OggOpusDecoder()(stream[:cut], last=True).dtype == np.float32
    else:
        with pytest.raises(BadAudio):
            OggOpusDecoder()(stream[:cut], last=True)


@settings(max_examples=100, deadline=None, database=None)
@given(st.binary(max_size=2000), st.integers(1, 500))
def test_arbitrary_bytes_are_audio_or_bad_audio_never_another_error(blob, piece):
    decoder = OggOpusDecoder(max_seconds=600)
    try:
        for i in range(0, len(blob), piece):
            decoder(blob[i: i + piece])
        decoder(b"", last=True)
    except BadAudio:
        pass


def test_a_stereo_stream_from_another_encoder_is_mixed_to_mono():
    """An Ogg Opus file written by FFmpeg (PyAV), stereo at 48 kHz: both ears averaged, 16 kHz out."""
    import io

    import av

    rate, seconds = 48_000, 2
    t = np.arange(rate * seconds) / rate
    left, right = 0.3 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 440 * t)
    sink = io.BytesIO()
    with av.open(sink, "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=rate, layout="stereo")
        for start in range(0, len(t), 960):
            frame = av.AudioFrame.from_ndarray(np.stack([left, right])[:, start: start + 960].astype(np.float32),
                                               format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = rate, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    out = OggOpusDecoder()(sink.getvalue(), last=True)
    assert abs(len(out) - 16_000 * seconds) <= 320  # FFmpeg pads to whole 20 ms frames and trims by granule
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(len(out)) / 16_000)
    assert np.corrcoef(out[800:-800], tone[800:-800])[0, 1] > 0.95
