"""Live transcription latency: the Realtime API (WebSocket) next to gRPC, under the same load.

One engine (the real backbone) serves REST (uvicorn, loopback) and gRPC in this process; the clients
run in a child process. ``sessions`` clients stream at once, in real time (100 ms chunks, sent when a microphone would have recorded them):
each streams ``rounds`` real-speech clips, each followed by 1.5 s of silence, so the server's VAD ends
every utterance. The Realtime pass sends 24 kHz PCM16 over ``/v1/realtime`` (server VAD); the gRPC
pass sends the same audio at 16 kHz to ``StreamingRecognize`` (interim results on in both). Each
repeat runs both passes, in alternating order. Reported per transport:

- ``final_after_speech_end_s``: from the moment the chunk holding a clip's last speech frame (found
  by Silero VAD, as the server does) was actually sent to the clip's final transcript (p50, p95, max);
- ``failed``: clips that got no final;
- the work the pass caused: seconds of audio decoded (interim re-decodes included), decoder steps,
  mean rows per step of the running batch, and the server process's CPU time (all its threads).

Also ``stream=true`` file transcription (``file_stream``): each clip (and the two longest joined, about
14 s with the fixtures) is posted once, one at a time, and the time from sending the request to its first
``transcript.text.delta`` and to ``transcript.text.done`` is reported (p50, p95), with the deltas per
request and the first delta's share of the time to done.

Also the web page's load size: the bytes of what ``/ui/`` loads (HTML, JS, CSS, the audio worklet),
as served and as gzip would send them.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import math
import multiprocessing
import statistics
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import soxr
import torch

from ..audio import SAMPLE_RATE_HZ, decode_audio, encode_wav_pcm16
from ..audio.vad import FRAME_SAMPLES, SileroVad
from ..config import Settings
from ..engine.engine import Engine
from .common import cpu_model, free_port

DEFAULT_AUDIO_DIR = Path(__file__).resolve().parents[2] / "tests" / "data" / "real-speech"
CHUNK_S = 0.1
SILENCE_S = 1.5
LEAD_IN_TOLERANCE_S = 0.5  # an utterance starts up to the VAD's lead-in (0.3 s) before its speech
WS_RATE_HZ = 24_000
PAGE_FILES = ("index.html", "app.js", "style.css", "pcm-worklet.js")


@dataclass(frozen=True)
class Clip:
    audio: np.ndarray  # 16 kHz float32
    speech_end_s: float


@dataclass(frozen=True)
class Script:
    """One session's audio: clips with silence after each, and where each clip starts."""

    clips: list[Clip]

    def audio(self, rate: int) -> bytes:
        parts = []
        for clip in self.clips:
            audio = clip.audio if rate == SAMPLE_RATE_HZ else soxr.resample(clip.audio, SAMPLE_RATE_HZ, rate)
            parts += [audio, np.zeros(int(SILENCE_S * rate), np.float32)]
        return (np.clip(np.concatenate(parts), -1, 1) * 32767).astype("<i2").tobytes()

    def starts_s(self) -> list[float]:
        out, t = [], 0.0
        for clip in self.clips:
            out.append(t)
            t += len(clip.audio) / SAMPLE_RATE_HZ + SILENCE_S
        return out

    def clip_at(self, stream_s: float) -> int:
        """The clip an utterance starting at ``stream_s`` belongs to (its start includes up to
        ``LEAD_IN_TOLERANCE_S`` of the silence before the clip)."""
        return max(0, sum(1 for s in self.starts_s() if s <= stream_s + LEAD_IN_TOLERANCE_S) - 1)

    def speech_end_sent_at(self, sent: list[float]) -> list[float]:
        """When the chunk holding each clip's last speech frame was sent (``sent``: each chunk's time)."""
        return [sent[min(len(sent) - 1, math.ceil((start + c.speech_end_s) / CHUNK_S) - 1)]
                for start, c in zip(self.starts_s(), self.clips)]


def _speech_end_s(audio: np.ndarray) -> float:
    vad, end = SileroVad(), 0
    for start in range(0, len(audio) - FRAME_SAMPLES + 1, FRAME_SAMPLES):
        if vad(audio[start: start + FRAME_SAMPLES]) >= 0.5:
            end = start + FRAME_SAMPLES
    return end / SAMPLE_RATE_HZ


def _clips(audio_dir: Path) -> list[Clip]:
    files = sorted(p for p in audio_dir.rglob("*") if p.suffix in (".flac", ".wav"))
    if not files:
        raise FileNotFoundError(f"no .flac or .wav files under {audio_dir}")
    audios = [decode_audio(p) for p in files]
    return [Clip(a, _speech_end_s(a)) for a in audios]


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50": round(statistics.median(ordered), 3), "p95": round(p95, 3), "max": round(ordered[-1], 3),
            "n": len(ordered)}


# --- one session per transport ----------------------------------------------------------------------
async def _realtime_session(url: str, script: Script) -> list[float | None]:
    import websockets

    pcm, step = script.audio(WS_RATE_HZ), int(WS_RATE_HZ * CHUNK_S) * 2
    finals: dict[int, float] = {}
    starts: dict[str, float] = {}
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {
            "input": {"format": {"type": "audio/pcm", "rate": WS_RATE_HZ}}}}}))

        async def receive() -> None:
            async for message in ws:  # ends (ConnectionClosed) if the server closes the session
                event = json.loads(message)
                if event["type"] == "input_audio_buffer.speech_started":
                    starts[event["item_id"]] = event["audio_start_ms"] / 1000
                elif event["type"] == "conversation.item.input_audio_transcription.completed":
                    finals[script.clip_at(starts.get(event["item_id"], 0.0))] = time.perf_counter()
                    if len(finals) == len(script.clips):
                        return

        reader = asyncio.create_task(receive())
        t0, sent = time.perf_counter(), []
        for k, start in enumerate(range(0, len(pcm), step)):
            await asyncio.sleep(max(0.0, t0 + (k + 1) * CHUNK_S - time.perf_counter()))
            chunk = base64.b64encode(pcm[start: start + step]).decode()
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
            sent.append(time.perf_counter())
        try:
            await asyncio.wait_for(reader, 60)
        except (asyncio.TimeoutError, websockets.ConnectionClosed):  # its missing clips count as failed
            reader.cancel()
    ends = script.speech_end_sent_at(sent)
    return [finals[i] - ends[i] if i in finals else None for i in range(len(script.clips))]


def _grpc_session(address: str, script: Script) -> list[float | None]:
    from splitasr_device import SplitASRClient

    pcm, step = script.audio(SAMPLE_RATE_HZ), int(SAMPLE_RATE_HZ * CHUNK_S) * 2
    sent: list[float] = []

    def source():
        t0 = time.perf_counter()
        for k, start in enumerate(range(0, len(pcm), step)):
            time.sleep(max(0.0, t0 + (k + 1) * CHUNK_S - time.perf_counter()))
            yield pcm[start: start + step]
            sent.append(time.perf_counter())  # the client library has taken the chunk

    finals: dict[int, float] = {}
    with SplitASRClient(address) as client:
        for update in client.stream(source(), sample_rate_hz=SAMPLE_RATE_HZ, interim_results=True):
            if update.is_final:
                finals[script.clip_at(update.start)] = time.perf_counter()
    ends = script.speech_end_sent_at(sent)
    return [finals[i] - ends[i] if i in finals else None for i in range(len(script.clips))]


def _decoded() -> tuple[float, float, float]:
    """Seconds of audio decoded, decoder steps and rows stepped so far (the engine's own counters)."""
    from ..observability import REGISTRY

    def value(name: str) -> float:
        return REGISTRY.get_sample_value(name) or 0.0

    return (value("splitasr_audio_seconds_total"), value("splitasr_batch_size_count"),
            value("splitasr_batch_size_sum"))


def _work(totals: list[float]) -> dict:
    audio_s, steps, rows, cpu_s = totals
    return {"decoded_audio_s": round(audio_s, 1), "decoder_steps": int(steps),
            "mean_rows_per_step": round(rows / steps, 2) if steps else None, "server_cpu_s": round(cpu_s, 1)}


def _summary(per_session: list[list[float | None]]) -> dict:
    values = [v for session in per_session for v in session]
    return {"final_after_speech_end_s": _percentiles([v for v in values if v is not None]),
            "failed": sum(v is None for v in values)}


def _realtime_pass(port: int, scripts: list[Script]) -> list[list[float | None]]:
    url = f"ws://127.0.0.1:{port}/v1/realtime?intent=transcription"

    async def all_sessions():
        return await asyncio.gather(*(_realtime_session(url, s) for s in scripts))

    return asyncio.run(all_sessions())


def _grpc_pass(address: str, scripts: list[Script]) -> list[list[float | None]]:
    results: list = [None] * len(scripts)

    def one(i: int) -> None:
        results[i] = _grpc_session(address, scripts[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(scripts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


# --- stream=true ------------------------------------------------------------------------------------
def _file_stream_pass(url: str, files: list[bytes]) -> list[tuple[float, float, int]]:
    """Each file posted with stream=true in turn: (s to the first delta, s to done, deltas)."""
    out = []
    with httpx.Client(timeout=300) as client:
        for data in files:
            first, deltas = None, 0
            start = time.perf_counter()
            with client.stream("POST", f"{url}/v1/audio/transcriptions", files={"file": ("clip.wav", data)},
                               data={"model": "whisper-1", "stream": "true"}) as response:
                response.raise_for_status()
                for line in response.iter_lines():
                    if '"transcript.text.delta"' in line:
                        deltas += 1
                        first = first or time.perf_counter() - start
            done = time.perf_counter() - start
            out.append((first if first is not None else done, done, deltas))
    return out


def _file_stream_summary(got: list[tuple[float, float, int]], joined_s: float) -> dict:
    """All requests, and the last one (the two longest clips joined) on its own."""
    first, done, deltas = got[-1]
    return {"first_delta_s": _percentiles([g[0] for g in got]), "done_s": _percentiles([g[1] for g in got]),
            "deltas_per_request": _percentiles([float(g[2]) for g in got]),
            "first_delta_over_done_p50": round(statistics.median(g[0] / g[1] for g in got), 3),
            "joined": {"audio_s": round(joined_s, 2), "first_delta_s": round(first, 3), "done_s": round(done, 3),
                       "deltas": deltas}}


# --- the page ---------------------------------------------------------------------------------------
def page_size(url: str) -> dict:
    """Bytes of what /ui/ loads, fetched from the running server (nothing is loaded from elsewhere)."""
    bodies = {}
    for name in PAGE_FILES:
        response = httpx.get(f"{url}/ui/{'' if name == 'index.html' else name}", timeout=30)
        response.raise_for_status()
        bodies[name] = response.content
    return {"files": {n: len(b) for n, b in bodies.items()}, "total_bytes": sum(map(len, bodies.values())),
            "gzip_bytes": sum(len(gzip.compress(b, 9)) for b in bodies.values()), "requests": len(bodies)}




def run(*, backbone: str = "tiny.en", sessions: int = 8, rounds: int = 2, repeats: int = 1,
        audio_dir: Path = DEFAULT_AUDIO_DIR, threads: int | None = None, cache_dir: Path) -> dict:
    import uvicorn

    from ..api.rest.app import create_app
    from ..api.rpc.server import BackgroundGrpc

    if threads:
        torch.set_num_threads(threads)
    clips = _clips(audio_dir)
    scripts = [Script([clips[(s * rounds + r) % len(clips)] for r in range(rounds)]) for s in range(sessions)]
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(backbone=backbone, cache_dir=cache_dir, store_dir=Path(tmp) / "store", host="127.0.0.1",
                            port=free_port(), device="cpu", _env_file=None)
        engine = Engine(settings)
        engine.load()
        server = uvicorn.Server(uvicorn.Config(create_app(settings, engine), host="127.0.0.1", port=settings.port,
                                               log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        grpc = BackgroundGrpc(settings, engine)
        try:
            url = f"http://127.0.0.1:{settings.port}"
            while not server.started:
                time.sleep(0.05)
            runs: dict[str, list] = {"realtime": [], "grpc": []}
            passes: dict[str, list] = {"realtime": [], "grpc": []}
            # audio s, decoder steps, rows, server CPU s
            work = {"realtime": [0.0, 0.0, 0.0, 0.0], "grpc": [0.0, 0.0, 0.0, 0.0]}
            # the clients run in another process: in this one they would wait for the GIL behind the
            # server's threads, and their timestamps with them
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as clients:
                for repeat in range(repeats):
                    order = ("realtime", "grpc") if repeat % 2 == 0 else ("grpc", "realtime")  # alternate
                    for transport in order:
                        target = (_realtime_pass, settings.port) if transport == "realtime" else (_grpc_pass,
                                                                                                grpc.address)
                        before = (*_decoded(), time.process_time())
                        got = clients.submit(*target, scripts).result()
                        after = (*_decoded(), time.process_time())
                        runs[transport] += got
                        passes[transport].append(_summary(got)["final_after_speech_end_s"].get("p50"))
                        work[transport] = [w + a - b for w, a, b in zip(work[transport], after, before)]
                longest = sorted(clips, key=lambda c: len(c.audio))[-2:]
                joined = np.concatenate([longest[1].audio, np.zeros(SAMPLE_RATE_HZ // 2, np.float32), longest[0].audio])
                files = [encode_wav_pcm16(c.audio) for c in clips] + [encode_wav_pcm16(joined)]
                file_stream = _file_stream_summary(clients.submit(_file_stream_pass, url, files).result(),
                                                   len(joined) / SAMPLE_RATE_HZ)
            page = page_size(url)
        finally:
            grpc.stop()
            server.should_exit = True
            thread.join(30)
            engine.close(10)
    realtime, grpc_summary = _summary(runs["realtime"]), _summary(runs["grpc"])
    ratio = None
    if realtime["final_after_speech_end_s"] and grpc_summary["final_after_speech_end_s"]:
        ratio = round(realtime["final_after_speech_end_s"]["p50"] / grpc_summary["final_after_speech_end_s"]["p50"], 2)
    return {
        "backbone": backbone, "device": "cpu", "cpu": cpu_model(), "threads": torch.get_num_threads(),
        "concurrent_sessions": sessions, "clips_per_session": rounds, "repeats": repeats,
        "pacing": f"real time, {int(CHUNK_S * 1000)} ms chunks, {SILENCE_S:g} s of silence after each clip",
        "realtime_websocket": {**realtime, "p50_per_pass": passes["realtime"], **_work(work["realtime"])},
        "grpc_streaming": {**grpc_summary, "p50_per_pass": passes["grpc"], **_work(work["grpc"])},
        "realtime_over_grpc_p50": ratio,
        "file_stream": file_stream,
        "page": page,
    }
