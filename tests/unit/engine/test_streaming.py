"""The streaming policy without a model: local agreement, PCM decoding, VAD endpointing, finals."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from splitasr.audio.pcm import Linear16Decoder
from splitasr.audio.vad import FRAME_SAMPLES, EnergyVad, SileroVad
from splitasr.decoding import Segment, Transcription
from splitasr.engine.streaming import (
    Final,
    Interim,
    LocalAgreement,
    SpeechEvent,
    StreamingSession,
    StreamPolicy,
    agreed_prefix,
)
from splitasr.engine.worker import PRIORITY_FINAL, PRIORITY_INTERIM
from splitasr.errors import BadAudio

RATE = 16_000
DEFAULT_POLICY = StreamPolicy()


def test_agreed_prefix_ignores_case_and_punctuation():
    assert agreed_prefix(["Go", "forward,", "ten"], ["go", "forward", "ten", "meters"]) == 3
    assert agreed_prefix(["a", "b", "c"], ["a", "x", "c"]) == 1
    assert agreed_prefix([], ["a"]) == 0


def test_local_agreement_commits_what_two_hypotheses_share_and_never_shrinks():
    la = LocalAgreement()
    assert la.update("and mister") == ("", 0.0, "and mister", 0.05)
    assert la.update("and mister john dash") == ("and mister", 0.75, "john dash", 0.05)
    assert la.committed == "and mister"
    # the tail shares "dashwood" with nothing before it, "had" neither: the least stability
    assert la.update("and mister john dashwood had") == ("and mister john", 0.75, "dashwood had", 0.05)
    # a later hypothesis that disagrees early keeps the committed length; once more confirmed, the
    # committed words are more stable, and a tail the previous hypothesis had is too
    assert la.update("and mr john dashwood had then") == ("and mr john", 0.875, "dashwood had then", 0.3333)
    assert la.update("and mr john dashwood had then") == ("and mr john dashwood had then", 0.75, "", 0.0)


def test_linear16_decoder_carries_odd_bytes_and_scales():
    pcm = (np.array([0, 16384, -32768, 32767], "<i2")).tobytes()
    decode = Linear16Decoder(RATE)
    first = decode(pcm[:3])
    rest = decode(pcm[3:], last=True)
    samples = np.concatenate([first, rest])
    np.testing.assert_allclose(samples, [0, 0.5, -1.0, 32767 / 32768], atol=1e-6)


def test_linear16_decoder_resamples_to_16k():
    tone = (np.sin(np.arange(8000 * 2) * 2 * np.pi * 440 / 8000) * 10000).astype("<i2")
    decode = Linear16Decoder(8000)
    out = np.concatenate([decode(c.tobytes()) for c in np.array_split(tone, 7)] + [decode(b"", last=True)])
    assert abs(len(out) - 2 * RATE) < 64


def test_linear16_decoder_rejects_bad_rates():
    with pytest.raises(BadAudio, match="sample_rate_hz"):
        Linear16Decoder(100)


def _speech(seconds: float, seed: int = 0) -> np.ndarray:
    """Loud noise: 'speech' to the energy VAD."""
    return (np.random.default_rng(seed).standard_normal(int(seconds * RATE)) * 0.1).astype(np.float32)


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.float32)


class FakeDecoder:
    """Transcribes audio as one word per 0.25 s, so hypotheses grow with the buffer."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.priorities: list[int] = []
        self.prefixes: list[str] = []

    async def __call__(self, audio: np.ndarray, priority: int, prefix: str = "") -> Transcription:
        """As a real decoder with a forced ``prefix``: the text is what follows it."""
        self.calls.append(len(audio))
        self.priorities.append(priority)
        self.prefixes.append(prefix)
        await asyncio.sleep(0)
        words = " ".join(f"w{i}" for i in range(len(prefix.split()), int(len(audio) / RATE / 0.25)))
        return Transcription(words, "en", len(audio) / RATE, [Segment(0, 0.0, len(audio) / RATE, words, [])])


async def _session_events(session: StreamingSession, chunks: list[np.ndarray], then=None) -> list:
    """Push ``chunks`` (letting the worker decode between them, as a real stream does), call
    ``then(session)``, close, and collect every event."""
    worker = asyncio.create_task(session.run())
    for chunk in chunks:
        session.push(chunk)
        await asyncio.sleep(0.001)
    if then is not None:
        then(session)
    session.close()
    await worker
    events = []
    while (event := session.events.get_nowait()) is not None:
        events.append(event)
    return events


async def _run(chunks: list[np.ndarray], policy: StreamPolicy = DEFAULT_POLICY, interim: bool = True,
               decoder: FakeDecoder | None = None) -> list:
    return await _session_events(StreamingSession(decoder or FakeDecoder(), EnergyVad(), policy, interim), chunks)


def _chunked(audio: np.ndarray, ms: int = 100) -> list[np.ndarray]:
    step = RATE * ms // 1000
    return [audio[i: i + step] for i in range(0, len(audio), step)]


def test_silence_after_speech_ends_the_utterance_with_a_final():
    audio = np.concatenate([_silence(1.0), _speech(2.0), _silence(1.0), _speech(1.0, 1), _silence(0.2)])
    events = asyncio.run(_run(_chunked(audio)))
    finals = [e for e in events if isinstance(e, Final)]
    assert [f.utterance for f in finals] == [0, 1]
    first, second = finals
    # the first utterance: the speech, a short lead-in and tail, cut after 0.5 s of silence
    assert 0.4 <= first.start_s <= 0.75 and 3.0 <= first.end_s <= 3.3
    assert second.start_s >= first.end_s and second.end_s == pytest.approx(len(audio) / RATE, abs=0.04)
    interims = [e for e in events if isinstance(e, Interim)]
    assert interims and all(i.utterance in (0, 1) for i in interims)
    # interims of one utterance come before its final
    assert events.index(first) > events.index(next(i for i in interims if i.utterance == 0))


def test_interim_text_stabilises():
    events = asyncio.run(_run(_chunked(np.concatenate([_speech(4.0), _silence(0.7)]))))
    stables = [e.stable for e in events if isinstance(e, Interim)]
    assert len(stables) >= 3
    assert stables[-1] and all(len(a.split()) <= len(b.split()) for a, b in itertools.pairwise(stables))


def test_interims_decode_only_what_follows_the_committed_words():
    decoder = FakeDecoder()
    events = asyncio.run(_run(_chunked(np.concatenate([_speech(4.0), _silence(0.7)])), decoder=decoder))
    interims = [e for e in events if isinstance(e, Interim)]
    forced = [p for p, priority in zip(decoder.prefixes, decoder.priorities) if priority == PRIORITY_INTERIM]
    assert forced[0] == "" and any(forced), forced  # the first has nothing committed yet
    for before, prefix in zip(interims, forced[1:]):  # each interim's committed words force the next one
        assert prefix == before.stable
    # the shown text is the whole hypothesis, and the final is decoded without a prefix
    assert all(f"{i.stable} {i.unstable}".strip().startswith("w0") for i in interims)
    assert all(p == "" for p, priority in zip(decoder.prefixes, decoder.priorities) if priority == PRIORITY_FINAL)
    final = next(e for e in events if isinstance(e, Final))
    assert final.result.text.startswith("w0")
    # without the policy, nothing is forced
    plain = FakeDecoder()
    asyncio.run(_run(_chunked(np.concatenate([_speech(4.0), _silence(0.7)])), StreamPolicy(prefix_interims=False),
                     decoder=plain))
    assert not any(plain.prefixes)


def test_no_interims_when_not_asked_and_no_final_without_speech():
    events = asyncio.run(_run(_chunked(np.concatenate([_speech(1.5), _silence(0.7)])), interim=False))
    assert [type(e) for e in events] == [Final]
    assert asyncio.run(_run(_chunked(_silence(3.0)))) == []


def test_buffer_is_capped():
    policy = StreamPolicy(max_utterance_s=2.0)
    events = asyncio.run(_run(_chunked(_speech(5.0)), policy, interim=False))
    ends = [round(e.end_s - e.start_s, 1) for e in events]
    assert len(events) == 3 and max(ends) <= 2.0


def test_final_reuses_an_interim_that_decoded_the_same_audio():
    decoder = FakeDecoder()
    samples = 31 * FRAME_SAMPLES  # ~1 s, whole VAD frames: nothing is left over at half-close
    events = asyncio.run(_run([_speech(samples / RATE)], decoder=decoder))  # one chunk, then half-close
    assert decoder.calls == [samples]
    assert isinstance(events[-1], Final)


def test_silero_finds_speech_in_real_audio_only(real_speech):
    from splitasr.audio import decode_audio

    audio = decode_audio(real_speech[-1]["path"])
    vad = SileroVad()
    probs = [vad(audio[i: i + FRAME_SAMPLES]) for i in range(0, len(audio) - FRAME_SAMPLES + 1, FRAME_SAMPLES)]
    assert max(probs) > 0.9
    silent = SileroVad()
    assert max(silent(np.zeros(FRAME_SAMPLES, np.float32)) for _ in range(20)) < 0.2


def test_a_decode_started_in_the_silence_after_speech_becomes_the_final():
    """Speculation: once 0.2 s of silence follows speech, the buffer is decoded; at the endpoint
    (0.5 s) that hypothesis covers all the speech, so the final needs no second decode."""
    decoder = FakeDecoder()
    audio = np.concatenate([_speech(1.0), _silence(1.0)])
    events = asyncio.run(_run(_chunked(audio, 32), interim=False, decoder=decoder))
    [final] = events
    assert len(decoder.calls) == 1 and decoder.calls[0] < RATE * 1.5
    assert final.end_s == pytest.approx(1.2, abs=0.05)


def test_speech_events_bracket_each_utterance_in_order():
    audio = np.concatenate([_silence(1.0), _speech(1.5), _silence(1.0), _speech(1.0, 1), _silence(1.0)])
    session = StreamingSession(FakeDecoder(), EnergyVad(), DEFAULT_POLICY, False, speech_events=True)
    events = asyncio.run(_session_events(session, _chunked(audio)))
    speech = [e for e in events if isinstance(e, SpeechEvent)]
    assert [(e.utterance, e.started) for e in speech] == [(0, True), (0, False), (1, True), (1, False)]
    # onset less the 0.3 s lead-in; the end is the cut (speech end + tail)
    assert speech[0].at_s == pytest.approx(0.7, abs=0.05) and speech[1].at_s == pytest.approx(2.7, abs=0.05)
    finals = [e for e in events if isinstance(e, Final)]
    for final in finals:  # a final comes after its utterance's stop
        stop = next(e for e in speech if e.utterance == final.utterance and not e.started)
        assert events.index(stop) < events.index(final)
    plain = asyncio.run(_run(_chunked(audio)))
    assert not any(isinstance(e, SpeechEvent) for e in plain), "off unless asked for"


def test_end_utterance_cuts_now_and_reports_nothing_without_speech():
    session = StreamingSession(FakeDecoder(), EnergyVad(), DEFAULT_POLICY, False, speech_events=True)
    cut = []
    events = asyncio.run(_session_events(session, _chunked(np.concatenate([_speech(1.0), _silence(0.1)])),
                                         then=lambda s: cut.extend([s.end_utterance(), s.end_utterance()])))
    assert cut == [0, None]
    [final] = [e for e in events if isinstance(e, Final)]
    assert final.utterance == 0 and final.end_s == pytest.approx(1.1, abs=0.01)


def test_discard_utterance_drops_the_audio_in_progress():
    decoder = FakeDecoder()
    session = StreamingSession(decoder, EnergyVad(), DEFAULT_POLICY, False, speech_events=True)

    def clear_then_speak(s: StreamingSession) -> None:
        s.discard_utterance()
        s.push(_speech(0.5, 2))

    events = asyncio.run(_session_events(session, _chunked(_speech(2.0)), then=clear_then_speak))
    [final] = [e for e in events if isinstance(e, Final)]
    assert final.utterance == 1, "the discarded utterance gets no final and its index is not reused"
    assert final.end_s - final.start_s == pytest.approx(0.5, abs=0.04)
    assert all(n <= 0.5 * RATE + FRAME_SAMPLES for n in decoder.calls)


def test_interims_decode_at_interim_priority_and_the_speech_end_at_final_priority():
    decoder = FakeDecoder()
    events = asyncio.run(_run(_chunked(np.concatenate([_speech(2.0), _silence(1.0)]), 32), decoder=decoder))
    assert decoder.priorities[:-1] and set(decoder.priorities[:-1]) == {PRIORITY_INTERIM}
    assert decoder.priorities[-1] == PRIORITY_FINAL, "the decode after speech pauses serves the final"
    assert isinstance(events[-1], Final)
    # no interim started once speech had paused: the last decode covers the speech and a pause only
    assert decoder.calls[-1] <= RATE * (2.0 + DEFAULT_POLICY.speculate_after_s + 0.15)


class HeldInterims(FakeDecoder):
    """Interim decodes wait until released (a busy engine); records which were withdrawn."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.asked: list[int] = []  # priorities, as submitted
        self.withdrawn: list[int] = []

    async def __call__(self, audio: np.ndarray, priority: int) -> Transcription:
        self.asked.append(priority)
        if priority == PRIORITY_INTERIM:
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.withdrawn.append(len(audio))
                raise
        return await super().__call__(audio, priority)


def test_an_interim_waiting_when_speech_ends_is_withdrawn_and_the_final_goes_first():
    decoder = HeldInterims()

    async def scenario() -> list:
        session = StreamingSession(decoder, EnergyVad(), DEFAULT_POLICY, True)
        worker = asyncio.create_task(session.run())
        for chunk in _chunked(_speech(1.0), 32):
            session.push(chunk)
            await asyncio.sleep(0.001)
        assert decoder.asked == [PRIORITY_INTERIM] and not decoder.withdrawn  # held by the "engine"
        for chunk in _chunked(_silence(1.0), 32):  # speech ends, then the endpoint
            session.push(chunk)
            await asyncio.sleep(0.001)
        session.close()
        await worker
        events = []
        while (event := session.events.get_nowait()) is not None:
            events.append(event)
        return events

    events = asyncio.run(scenario())
    assert len(decoder.withdrawn) == 1, "the held interim was cancelled, not left to decode"
    assert decoder.asked == [PRIORITY_INTERIM, PRIORITY_FINAL]
    assert len(decoder.calls) == 1 and decoder.calls[0] > decoder.withdrawn[0]  # only the speech-end decode ran
    assert [type(e) for e in events][-1] is Final and all(not isinstance(e, Interim) or e.utterance == 0
                                                         for e in events)
