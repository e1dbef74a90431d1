"""Pure parts of live transcription: cutting long files at pauses, parsing Realtime client events."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from splitasr.api.realtime.errors import EventError
from splitasr.api.realtime.events import AppendEvent, SessionUpdateEvent, error_event, parse_client_event
from splitasr.engine.file_stream import split_at_pauses

RATE = 16_000


def test_long_audio_is_cut_in_the_quiet_gap_near_each_window_end():
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(70 * RATE) * 0.1).astype(np.float32)
    for quiet_s in (27.0, 55.5):  # 0.3 s pauses inside the last 5 s of each window
        audio[int(quiet_s * RATE): int((quiet_s + 0.3) * RATE)] = 0
    spans = split_at_pauses(audio)
    assert [round(s / RATE, 1) for s, _ in spans] == [0.0, pytest.approx(27.1, abs=0.2), pytest.approx(55.6, abs=0.2)]
    assert spans[-1][1] == len(audio) and all(end == nxt for (_, end), (nxt, _) in itertools.pairwise(spans))
    assert all(end - start <= 30 * RATE for start, end in spans)


def test_short_audio_is_one_window():
    assert split_at_pauses(np.zeros(30 * RATE, np.float32)) == [(0, 30 * RATE)]
    assert split_at_pauses(np.zeros(0, np.float32)) == [(0, 0)]


def test_client_events_parse_strictly():
    update = parse_client_event(json.dumps({"type": "session.update", "event_id": "e1", "session": {
        "type": "transcription", "audio": {"input": {"turn_detection": None}}}}))
    assert isinstance(update, SessionUpdateEvent)
    assert update.session.model_dump(exclude_unset=True) == {"type": "transcription",
                                                             "audio": {"input": {"turn_detection": None}}}
    assert isinstance(parse_client_event('{"type": "input_audio_buffer.append", "audio": "AAA="}'), AppendEvent)


@pytest.mark.parametrize("message, code, param", [
    ("nope", "invalid_json", None),
    ('"a string"', "invalid_json", None),
    ('{"type": 7}', "invalid_value", "type"),
    ('{"type": "conversation.item.create"}', "invalid_value", "type"),
    ('{"type": "input_audio_buffer.commit", "extra": 1}', "invalid_value", "extra"),
    (json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {"format": {
        "type": "audio/pcm", "sample_rate": 8000}}}}}), "invalid_value", "session.audio.input.format.sample_rate"),
])
def test_bad_client_events_name_what_is_wrong(message, code, param):
    with pytest.raises(EventError) as caught:
        parse_client_event(message)
    assert (caught.value.code, caught.value.param) == (code, param)
    event = error_event(caught.value)
    assert event["type"] == "error" and event["error"]["type"] == "invalid_request_error"
    assert set(event["error"]) == {"type", "code", "message", "param", "event_id"}


def test_the_event_id_of_a_bad_event_comes_back():
    with pytest.raises(EventError) as caught:
        parse_client_event('{"type": "input_audio_buffer.append", "event_id": "mine"}')
    assert caught.value.event_id == "mine"
