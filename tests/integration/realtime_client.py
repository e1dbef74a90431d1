"""A small Realtime API client for the tests (the ``websockets`` library), and audio helpers."""

from __future__ import annotations

import asyncio
import base64
import json
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import soxr
import websockets

from splitasr.audio import SAMPLE_RATE_HZ, decode_audio

from .conftest import TOKENS

CHUNK_MS = 100


def pcm16(path: Path, rate: int = 24_000, silence_s: float = 1.5) -> bytes:
    """A real-speech file as 16-bit PCM at ``rate``, with trailing silence for the VAD's endpoint."""
    audio = decode_audio(path)
    if rate != SAMPLE_RATE_HZ:
        audio = soxr.resample(audio, SAMPLE_RATE_HZ, rate)
    audio = np.concatenate([audio, np.zeros(int(silence_s * rate), np.float32)])
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


class Realtime:
    def __init__(self, ws: websockets.ClientConnection):
        self.ws = ws
        self.seen: list[dict] = []

    async def send(self, kind: str, **fields) -> None:
        await self.ws.send(json.dumps({"type": kind, **fields}))

    async def update(self, **session) -> dict:
        await self.send("session.update", session={"type": "transcription", **session})
        return await self.next_of("session.updated", "error")

    async def append(self, pcm: bytes, rate: int = 24_000, pace: float | None = 4.0) -> None:
        """Send ``pcm`` in 100 ms chunks, ``pace`` times faster than real time (None: at once)."""
        step = rate * 2 * CHUNK_MS // 1000
        for start in range(0, len(pcm), step):
            await self.send("input_audio_buffer.append", audio=base64.b64encode(pcm[start: start + step]).decode())
            if pace:
                await asyncio.sleep(CHUNK_MS / 1000 / pace)

    async def recv(self, timeout: float = 60) -> dict:
        event = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        self.seen.append(event)
        return event

    async def next_of(self, *kinds: str, timeout: float = 60) -> dict:
        while (event := await self.recv(timeout))["type"] not in kinds:
            pass
        return event

    async def transcripts(self, count: int, timeout: float = 90) -> list[str]:
        """The next ``count`` completed transcripts."""
        return [(await self.next_of("conversation.item.input_audio_transcription.completed",
                                    timeout=timeout))["transcript"] for _ in range(count)]

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.seen if e["type"] == kind]


@asynccontextmanager
async def realtime(server, tenant: str | None = "alice", query: str = "?intent=transcription", **connect):
    headers = {"Authorization": f"Bearer {TOKENS[tenant]}"} if tenant else {}
    url = server.url.replace("http://", "ws://") + "/v1/realtime" + query
    async with websockets.connect(url, additional_headers=headers, max_size=None, **connect) as ws:
        client = Realtime(ws)
        created = await client.recv()
        assert created["type"] in ("session.created", "error"), created
        yield client
