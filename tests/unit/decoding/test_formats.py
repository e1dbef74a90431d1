from splitasr.decoding import Segment, Transcription
from splitasr.decoding.formats import render, to_verbose_json

T = Transcription(
    text="Hello there. General Kenobi.",
    language="en",
    duration=3725.5,
    segments=[Segment(0, 0.0, 1.5, "Hello there.", [1]), Segment(1, 3661.25, 3725.5, "General Kenobi.", [2])],
)


def test_srt():
    assert render(T, "srt") == (
        "1\n00:00:00,000 --> 00:00:01,500\nHello there.\n\n"
        "2\n01:01:01,250 --> 01:02:05,500\nGeneral Kenobi.\n"
    )


def test_vtt():
    assert render(T, "vtt") == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello there.\n\n"
        "01:01:01.250 --> 01:02:05.500\nGeneral Kenobi.\n"
    )


def test_text_and_json():
    assert render(T, "text") == "Hello there. General Kenobi.\n"
    assert render(T, "json") == {"text": "Hello there. General Kenobi.",
                                 "usage": {"type": "duration", "seconds": 3725.5}}


def test_verbose_json_shape():
    body = to_verbose_json(T)
    assert body["language"] == "english"
    assert body["duration"] == 3725.5
    assert [s["start"] for s in body["segments"]] == [0.0, 3661.25]
