"""The Realtime API (/v1/realtime?intent=transcription) on the real server, with a WebSocket client
streaming real speech: VAD events, transcripts, manual commits, adapters, tenants, bad input."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import pytest
import websockets
from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

from splitasr.engine.engine import Engine
from splitasr.scoring import wer
from splitasr.tenants import RateLimiter
from tests.adapter_factory import adapter_bytes

from .conftest import TOKENS
from .realtime_client import pcm16, realtime

normalize = EnglishTextNormalizer({})
COMPLETED = "conversation.item.input_audio_transcription.completed"
DELTA = "conversation.item.input_audio_transcription.delta"
FEW = ("misc/goforward.flac", "cards/005.flac", "librivox/0890.flac")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 300))


def rows(real_speech, names=None) -> list[dict]:
    return [r for r in real_speech if names is None or r["audio_filepath"] in names]


async def _commit_manually(rt, path) -> tuple[dict, str]:
    """Turn detection off, ``path``'s speech appended and committed: its committed event and transcript."""
    await rt.update(audio={"input": {"turn_detection": None}})
    await rt.append(pcm16(path, silence_s=0.2), pace=None)
    await rt.send("input_audio_buffer.commit")
    committed = await rt.next_of("input_audio_buffer.committed")
    [text] = await rt.transcripts(1)
    return committed, text


async def _stream_clip(server, row: dict, rate: int = 24_000) -> dict:
    """One session per clip, streamed 4x faster than real time, server VAD: its events and text."""
    async with realtime(server) as rt:
        updated = await rt.update(audio={"input": {"format": {"type": "audio/pcm", "rate": rate}}})
        assert updated["type"] == "session.updated", updated
        await rt.append(pcm16(row["path"], rate))
        stopped = len([e for e in rt.seen if e["type"] == "input_audio_buffer.speech_stopped"])
        while len(rt.of(COMPLETED)) < max(1, stopped):
            await rt.next_of(COMPLETED, "input_audio_buffer.speech_stopped")
            stopped = len(rt.of("input_audio_buffer.speech_stopped"))
        return {"text": " ".join(e["transcript"] for e in rt.of(COMPLETED)), "events": rt.seen}


def _check_vad_events(events: list[dict]) -> None:
    kinds = [e["type"] for e in events]
    for completed in (e for e in events if e["type"] == COMPLETED):
        item = completed["item_id"]
        mine = [e["type"] for e in events if e.get("item_id") == item]
        assert mine[0] == "input_audio_buffer.speech_started", mine
        order = [mine.index(k) for k in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                                         "input_audio_buffer.committed", COMPLETED)]
        assert order == sorted(order), mine
        started = next(e for e in events if e["type"] == "input_audio_buffer.speech_started" and e["item_id"] == item)
        stopped = next(e for e in events if e["type"] == "input_audio_buffer.speech_stopped" and e["item_id"] == item)
        assert 0 <= started["audio_start_ms"] < stopped["audio_end_ms"]
        deltas = "".join(e["delta"] for e in events if e["type"] == DELTA and e["item_id"] == item)
        assert completed["transcript"].startswith(deltas) or not deltas, (deltas, completed["transcript"])
        assert completed["usage"]["type"] == "duration" and completed["usage"]["seconds"] > 0
    assert "error" not in kinds, [e for e in events if e["type"] == "error"]
    assert "conversation.item.input_audio_transcription.failed" not in kinds


def _wer_of_streams(server, chosen: list[dict], rate: int = 24_000) -> tuple[float, list]:
    async def all_clips():
        return await asyncio.gather(*(_stream_clip(server, r, rate) for r in chosen))

    results = run(all_clips())
    for result in results:
        _check_vad_events(result["events"])
    refs = [normalize(r["text"]) for r in chosen]
    hyps = [normalize(r["text"]) for r in results]
    return wer(refs, hyps), list(zip(refs, hyps))


def test_session_created_then_updated_with_the_effective_configuration(rest_server):
    async def scenario():
        async with realtime(rest_server) as rt:
            created = rt.seen[0]
            assert created["type"] == "session.created" and created["event_id"].startswith("event_")
            session = created["session"]
            assert session["type"] == "transcription" and session["id"].startswith("sess_")
            audio = session["audio"]["input"]
            assert audio["format"] == {"type": "audio/pcm", "rate": 24000}
            assert audio["transcription"]["model"] == "tiny.en"
            assert audio["turn_detection"] == {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                                               "silence_duration_ms": 500}
            updated = await rt.update(audio={"input": {
                "format": {"type": "audio/pcm", "rate": 16000},
                "transcription": {"model": "whisper-1", "language": "en", "prompt": "Cards."},
                "turn_detection": {"type": "server_vad", "threshold": 0.6, "prefix_padding_ms": 200,
                                   "silence_duration_ms": 700}}})
            assert updated["type"] == "session.updated"
            audio = updated["session"]["audio"]["input"]
            assert audio["format"]["rate"] == 16000
            assert audio["transcription"] == {"model": "whisper-1", "language": "en", "prompt": "Cards."}
            assert audio["turn_detection"]["threshold"] == 0.6
            assert audio["turn_detection"]["silence_duration_ms"] == 700
            # a partial update changes only what it names
            again = await rt.update(audio={"input": {"turn_detection": None}})
            audio = again["session"]["audio"]["input"]
            assert audio["turn_detection"] is None and audio["format"]["rate"] == 16000

    run(scenario())


def test_streamed_speech_gives_vad_events_and_accurate_transcripts(rest_server, real_speech):
    score, pairs = _wer_of_streams(rest_server, rows(real_speech, FEW))
    assert score <= 0.15, pairs


def test_16khz_audio_is_accepted(rest_server, real_speech):
    score, pairs = _wer_of_streams(rest_server, rows(real_speech, ("misc/goforward.flac",)), rate=16_000)
    assert score <= 0.15, pairs


@pytest.mark.slow
def test_every_real_speech_clip_streamed_at_once(rest_server, real_speech):
    score, pairs = _wer_of_streams(rest_server, rows(real_speech))
    assert score <= 0.15, pairs


def test_manual_commits_and_clear(rest_server, real_speech):
    [row] = rows(real_speech, ("misc/goforward.flac",))

    async def scenario():
        async with realtime(rest_server) as rt:
            committed, text = await _commit_manually(rt, row["path"])
            assert normalize(text) == normalize(row["text"])
            assert not rt.of("input_audio_buffer.speech_started") and not rt.of("input_audio_buffer.speech_stopped")
            assert rt.of(COMPLETED)[0]["item_id"] == committed["item_id"] and committed["previous_item_id"] is None
            # nothing left to commit
            await rt.send("input_audio_buffer.commit", event_id="c2")
            error = await rt.next_of("error")
            assert error["error"]["code"] == "input_audio_buffer_commit_empty" and error["error"]["event_id"] == "c2"
            # audio, then clear: gone; the next commit has nothing
            await rt.append(pcm16(row["path"]), pace=None)
            await rt.send("input_audio_buffer.clear")
            assert (await rt.next_of("input_audio_buffer.cleared", "error"))["type"] == "input_audio_buffer.cleared"
            await rt.send("input_audio_buffer.commit")
            assert (await rt.next_of("error", COMPLETED))["error"]["code"] == "input_audio_buffer_commit_empty"
            # a second utterance commits after the first
            await rt.append(pcm16(row["path"], silence_s=0.2), pace=None)
            await rt.send("input_audio_buffer.commit")
            second = await rt.next_of("input_audio_buffer.committed")
            assert second["previous_item_id"] == committed["item_id"]
            assert normalize((await rt.transcripts(1))[0]) == normalize(row["text"])

    run(scenario())


def test_a_committed_utterance_streams_its_text_as_the_final_decodes(rest_server, real_speech):
    """Manual commits have no interims: the deltas come from the final decode, a word or so at a time,
    before ``completed``, and add up to its transcript."""
    [row] = rows(real_speech, ("librivox/0870.flac",))

    async def scenario():
        async with realtime(rest_server) as rt:
            committed, text = await _commit_manually(rt, row["path"])
            mine = [e for e in rt.seen if e.get("item_id") == committed["item_id"]]
            kinds = [e["type"] for e in mine]
            deltas = [e["delta"] for e in mine if e["type"] == DELTA]
            assert len(deltas) >= 10, deltas  # token by token, not the whole text at once
            assert kinds.index(COMPLETED) > max(i for i, k in enumerate(kinds) if k == DELTA)
            assert "".join(deltas) == text
            assert wer([normalize(row["text"])], [normalize(text)]) <= 0.15, text

    run(scenario())


def test_commit_during_server_vad_ends_the_utterance(rest_server, real_speech):
    [row] = rows(real_speech, ("librivox/0880.flac",))

    async def scenario():
        async with realtime(rest_server) as rt:
            await rt.append(pcm16(row["path"], silence_s=0.0), pace=None)  # no silence: no endpoint
            await rt.send("input_audio_buffer.commit")
            [text] = await rt.transcripts(1)
            assert wer([normalize(row["text"])], [normalize(text)]) <= 0.3
            assert rt.of("input_audio_buffer.speech_started") and not rt.of("input_audio_buffer.speech_stopped")

    run(scenario())


def _upload(server, tenant: str, name: str, data: bytes) -> dict:
    response = httpx.post(f"{server.url}/v1/adapters", files={"file": ("a.safetensors", data)}, data={"name": name},
                          headers=server.headers(tenant), timeout=60)
    assert response.status_code == 201, response.text
    return response.json()


def test_an_adapter_by_name_and_another_tenants_is_not_found(rest_server, real_speech):
    engine: Engine = rest_server.engine
    card = _upload(rest_server, "alice", "rt-voice", adapter_bytes(engine.spec, "lora", seed=15))
    [row] = rows(real_speech, ("misc/goforward.flac",))

    async def scenario():
        async with realtime(rest_server) as rt:
            updated = await rt.update(audio={"input": {"transcription": {"model": "rt-voice"},
                                                       "turn_detection": None}})
            assert updated["session"]["audio"]["input"]["transcription"]["model"] == "rt-voice"
            await rt.append(pcm16(row["path"], silence_s=0.2), pace=None)
            await rt.send("input_audio_buffer.commit")
            [text] = await rt.transcripts(1)
            assert "forward" in text.lower()
        assert engine.pool.resident(card["sha256"]), "the adapter was not loaded"
        async with realtime(rest_server, "bob") as rt:
            error = await rt.update(audio={"input": {"transcription": {"model": "rt-voice"}}})
            assert error["type"] == "error", error
            assert error["error"]["code"] == "not_found" and "does not exist" in error["error"]["message"]
            assert error["error"]["param"] == "session.audio.input.transcription.model"
            ok = await rt.update(audio={"input": {"transcription": {"model": "tiny.en"}}})
            assert ok["type"] == "session.updated"

    try:
        run(scenario())
    finally:
        httpx.delete(f"{rest_server.url}/v1/adapters/rt-voice", headers=rest_server.headers("alice"), timeout=30)


BAD_EVENTS = [
    ("{not json", "invalid_json", None),
    ("[1, 2]", "invalid_json", None),
    (json.dumps({"type": "input_audio_buffer.explode"}), "invalid_value", "type"),
    (json.dumps({"type": "response.create"}), "invalid_value", "type"),
    (json.dumps({"type": "input_audio_buffer.append"}), "invalid_value", "audio"),
    (json.dumps({"type": "input_audio_buffer.append", "audio": "%%% not base64 %%%"}), "invalid_value", "audio"),
    (json.dumps({"type": "input_audio_buffer.append", "audio": 12}), "invalid_value", "audio"),
    (json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
        "format": {"type": "audio/pcmu"}}}}}), "invalid_value", "session.audio.input.format.type"),
    (json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
        "format": {"type": "audio/pcm", "rate": 44100}}}}}), "invalid_value", "session.audio.input.format.rate"),
    (json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
        "transcription": {"model": "gpt-4o-transcribe"}}}}}), "not_found", "session.audio.input.transcription.model"),
    (json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
        "transcription": {"language": "de"}}}}}), "invalid_value", "session.audio.input.transcription.language"),
    (json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
        "turn_detection": {"type": "semantic_vad"}}}}}), "invalid_value", "session.audio.input.turn_detection.type"),
    (json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
        "turn_detection": {"type": "server_vad", "threshold": 3}}}}}), "invalid_value",
     "session.audio.input.turn_detection.threshold"),
    (json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
        "turn_detection": {"type": "server_vad", "create_response": True}}}}}), "unsupported_field",
     "session.audio.input.turn_detection.create_response"),
    (json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
        "noise_reduction": {"type": "near_field"}}}}}), "unsupported_field", "session.audio.input.noise_reduction"),
    (json.dumps({"type": "session.update", "session": {"type": "transcription", "voice": "alloy"}}),
     "invalid_value", "session.voice"),
    (json.dumps({"type": "session.update", "session": {"type": "realtime"}}), "invalid_value", "session.type"),
]


def test_every_bad_event_gets_an_error_event_and_the_session_goes_on(rest_server, real_speech):
    [row] = rows(real_speech, ("cards/001.flac",))

    async def scenario():
        async with realtime(rest_server) as rt:
            for message, code, param in BAD_EVENTS:
                await rt.ws.send(message)
                error = await rt.next_of("error", "session.updated")
                assert error["type"] == "error", (message, error)
                assert error["error"]["type"] == "invalid_request_error", error
                assert (error["error"]["code"], error["error"]["param"]) == (code, param), (message, error)
                assert error["error"]["message"]
            await rt.ws.send(b"\x00binary")
            assert (await rt.next_of("error"))["error"]["code"] == "invalid_json"
            big = base64.b64encode(bytes(rest_server.settings.stream_max_chunk_bytes + 2)).decode()
            await rt.send("input_audio_buffer.append", audio=big, event_id="big")
            error = (await rt.next_of("error"))["error"]
            assert error["code"] == "payload_too_large" and error["event_id"] == "big"
            # the session still works, with the configuration it had
            updated = await rt.update(audio={"input": {"turn_detection": None}})
            assert updated["session"]["audio"]["input"]["format"]["rate"] == 24000
            await rt.append(pcm16(row["path"], silence_s=0.2), pace=None)
            await rt.send("input_audio_buffer.commit")
            assert "clubs" in (await rt.transcripts(1))[0].lower() or "10" in rt.of(COMPLETED)[0]["transcript"]

    run(scenario())


async def _refused(server, **kw) -> tuple[dict, int]:
    async with realtime(server, **kw) as rt:
        first = rt.seen[0]
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await rt.recv(timeout=10)
        return first, closed.value.rcvd.code


def test_authentication_by_header_or_browser_subprotocol(rest_server):
    async def scenario():
        first, code = await _refused(rest_server, tenant=None)
        assert first["type"] == "error" and first["error"]["code"] == "unauthenticated" and code == 1008
        url = rest_server.url.replace("http://", "ws://") + "/v1/realtime?intent=transcription"
        async with websockets.connect(url, subprotocols=["realtime", "openai-insecure-api-key.wrong-token-123456"]) \
                as ws:
            assert json.loads(await ws.recv())["error"]["message"] == "invalid API key"
        protocols = ["realtime", f"openai-insecure-api-key.{TOKENS['bob']}"]
        async with websockets.connect(url, subprotocols=protocols) as ws:
            assert ws.subprotocol == "realtime", "the server must answer with 'realtime', never the key"
            assert json.loads(await ws.recv())["type"] == "session.created"

    run(scenario())


def test_bad_connection_requests_are_refused_with_a_reason(rest_server):
    async def scenario():
        for query, param in (("?intent=conversation", "intent"), ("?intent=transcription&model=nope", None),
                             ("?intent=transcription&voice=alloy", "voice")):
            first, code = await _refused(rest_server, query=query)
            assert first["type"] == "error" and code == 1008, (query, first)
            assert param is None or first["error"]["param"] == param
        async with realtime(rest_server, query="?intent=transcription&model=whisper-1") as rt:
            assert rt.seen[0]["session"]["audio"]["input"]["transcription"]["model"] == "whisper-1"

    run(scenario())


def test_stream_and_rate_limits_apply(rest_server):
    engine: Engine = rest_server.engine

    async def scenario():
        engine.streams.by_tenant["grpc-tenant"] += engine.streams.limit  # as if gRPC streams held every slot
        try:
            first, code = await _refused(rest_server)
        finally:
            del engine.streams.by_tenant["grpc-tenant"]
        assert first["error"]["code"] == "overloaded" and code == 1013
        state = rest_server.app.state  # the limiter the app's routes share with gRPC (the engine's)
        limiter, state.rate_limiter = state.rate_limiter, RateLimiter(per_minute=1, burst=1)
        try:
            async with realtime(rest_server, "bob"):
                pass
            first, code = await _refused(rest_server, tenant="bob")
        finally:
            state.rate_limiter = limiter
        assert first["error"]["code"] == "rate_limit_exceeded" and code == 1013

    run(scenario())


def test_an_idle_session_is_closed(rest_server):
    settings = rest_server.settings
    idle = settings.stream_idle_timeout_s

    async def scenario():
        async with realtime(rest_server) as rt:
            error = await rt.next_of("error", timeout=10)
            assert error["error"]["code"] == "idle_timeout"
            with pytest.raises(websockets.ConnectionClosed):
                await rt.recv(timeout=10)

    settings.stream_idle_timeout_s = 1.0
    try:
        run(scenario())
    finally:
        settings.stream_idle_timeout_s = idle


def test_the_official_sdk_realtime_client_parses_every_event(rest_server, real_speech):
    import openai

    [row] = rows(real_speech, ("misc/goforward.flac",))
    pcm = pcm16(row["path"])

    async def scenario():
        client = openai.AsyncOpenAI(base_url=f"{rest_server.url}/v1", api_key=TOKENS["alice"], max_retries=0)
        kinds = []
        async with client.realtime.connect(extra_query={"intent": "transcription"}) as connection:
            await connection.session.update(session={"type": "transcription", "audio": {"input": {
                "format": {"type": "audio/pcm", "rate": 24000}, "transcription": {"model": "tiny.en"}}}})
            for start in range(0, len(pcm), 4800):
                await connection.input_audio_buffer.append(audio=base64.b64encode(pcm[start: start + 4800]).decode())
            async for event in connection:
                kinds.append(event.type)
                if event.type == "conversation.item.input_audio_transcription.completed":
                    assert normalize(event.transcript) == normalize(row["text"])
                    assert event.usage.type == "duration"
                    break
                assert event.type != "error", event
        assert kinds[:2] == ["session.created", "session.updated"]
        assert "input_audio_buffer.speech_started" in kinds and "input_audio_buffer.committed" in kinds

    run(scenario())
