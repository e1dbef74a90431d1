"""The decode loop's text listener (what ``stream=true`` streams), on real tiny.en weights and speech.

The pieces it is sent concatenate exactly to the final text whatever the decoding: greedy with and
without timestamps (token by token), long audio over several windows (a window's open last segment is
held back: it is decoded again in the next window), beam search (a window at a time), and a window
that fails Whisper's thresholds after text was sent (its fallback passes keep the sent tokens).
"""

from __future__ import annotations

import numpy as np
import pytest

from splitasr.audio import SAMPLE_RATE_HZ, decode_audio
from splitasr.decoding import DecodingOptions, compression_ratio
from splitasr.decoding.whisper.decoder import WhisperDecoder


@pytest.fixture(scope="module")
def decoder(tiny_backbone) -> WhisperDecoder:
    return WhisperDecoder(tiny_backbone, max_rows=8)


@pytest.fixture(scope="module")
def speech(real_speech) -> dict[str, np.ndarray]:
    return {r["audio_filepath"]: decode_audio(r["path"]) for r in real_speech}


def _decode(decoder: WhisperDecoder, audio: np.ndarray, options: DecodingOptions):
    """Decode to the end; the pieces sent, each with the number of decoder steps done when it came."""
    pieces: list[tuple[int, str]] = []
    steps = 0
    request = decoder.start(audio, options, listener=lambda text: pieces.append((steps, text)))
    while not request.done:
        decoder.admit(decoder.waiting())
        decoder.step()
        steps += 1
    return request.result, pieces, steps


@pytest.mark.parametrize("timestamps", [True, False])
def test_greedy_text_comes_token_by_token_and_adds_up(decoder, speech, timestamps):
    audio = np.concatenate([speech["librivox/0870.flac"], np.zeros(SAMPLE_RATE_HZ // 2, np.float32),
                            speech["librivox/0880.flac"]])
    result, pieces, steps = _decode(decoder, audio, DecodingOptions(without_timestamps=not timestamps))
    assert "".join(text for _, text in pieces) == result.text
    assert len(pieces) >= 15  # about one per word piece
    assert pieces[0][0] <= 3 < steps - 10  # the first text came within a few steps, long before the end
    assert all(text and "\ufffd" not in text for _, text in pieces)


def test_long_audio_over_several_windows_adds_up(decoder, speech):
    gap = np.zeros(SAMPLE_RATE_HZ // 2, np.float32)
    names = ["librivox/0870.flac", "librivox/0890.flac", "librivox/0920.flac", "librivox/0930.flac"] * 2
    audio = np.concatenate([x for name in names for x in (speech[name], gap)])  # about 49 s
    result, pieces, _ = _decode(decoder, audio, DecodingOptions())
    assert len({s.seek for s in result.segments}) >= 2  # two windows or more
    assert "".join(text for _, text in pieces) == result.text
    assert len(pieces) >= 30


def test_beam_search_sends_each_window_once_decoded(decoder, speech):
    result, pieces, steps = _decode(decoder, speech["librivox/0870.flac"], DecodingOptions(beam_size=3))
    assert [text for _, text in pieces] == [result.text] and pieces[0][0] == steps - 1  # in the last step


def test_a_window_that_falls_back_after_text_was_sent_keeps_that_text(decoder, speech):
    audio = speech["librivox/0870.flac"]
    plain, _, plain_steps = _decode(decoder, audio, DecodingOptions(logprob_threshold=None))
    # a compression-ratio limit that the text passes early on and fails at the end: text is sent, then
    # the window is decoded again, sampling hotter
    limit = compression_ratio(plain.text) - 0.05
    assert compression_ratio(plain.text[:20]) < limit
    options = DecodingOptions(logprob_threshold=None, compression_ratio_threshold=limit)
    result, pieces, steps = _decode(decoder, audio, options)
    # it fell back: hotter passes ran after the greedy one (whichever attempt is kept in the end: a
    # sample that passes the limit, or, when every temperature fails, the best of them)
    assert steps > plain_steps + 10
    sent_before = "".join(text for _, text in pieces[:-1])
    assert len(pieces) >= 3 and len(sent_before) >= 10  # text was sent by the first (greedy) pass
    assert "".join(text for _, text in pieces) == result.text
    assert result.text.startswith(sent_before)


def test_a_failing_listener_costs_only_its_own_text(decoder, speech):
    """A listener that raises gets no more text; its request and the others in the batch decode on."""
    def broken(text: str) -> None:
        raise RuntimeError("gone")

    got: list[str] = []
    failing = decoder.start(speech["misc/goforward.flac"], DecodingOptions(), listener=broken)
    fine = decoder.start(speech["librivox/0880.flac"], DecodingOptions(), listener=got.append)
    decoder.run([failing, fine])
    assert "forward" in failing.result.text.lower() and failing.listener is None
    assert "".join(got) == fine.result.text and "young man" in fine.result.text
