"""Decoder row-steps spent on stream interims with and without the committed words as their forced
prefix (``StreamPolicy.prefix_interims``), in-process on tiny.en: 5 real-speech clips pushed at
real-time pace, twice each way, alternating (docs/results.md). Prints one JSON line per run.

    python scripts/measure_interim_prefix.py
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
from splitasr.audio import decode_audio
from splitasr.audio.vad import make_vad
from splitasr.config import Settings
from splitasr.decoding import DecodingOptions
from splitasr.engine.engine import Engine
from splitasr.engine.streaming import Final, Interim, StreamingSession, StreamPolicy, stream_options
from splitasr.engine.worker import PRIORITY_INTERIM

SPEECH = Path(__file__).resolve().parent.parent / "tests/data/real-speech"
CHUNK = 1600  # 100 ms


async def stream(engine: Engine, audio: np.ndarray, policy: StreamPolicy) -> list:
    async def decode(chunk, priority, prefix=""):
        return await engine.transcribe_audio(chunk, stream_options(DecodingOptions(), priority, prefix),
                                             priority=priority)

    session = StreamingSession(decode, make_vad("silero"), policy)
    task = asyncio.create_task(session.run())
    audio = np.concatenate([audio, np.zeros(16000, np.float32)])
    for i in range(0, len(audio), CHUNK):
        session.push(audio[i:i + CHUNK])
        await asyncio.sleep(0.1)
    session.close()
    await task
    events = []
    while (event := session.events.get_nowait()) is not None:
        events.append(event)
    return events


def main() -> None:
    engine = Engine(Settings(cache_dir=Path("~/.cache/splitasr").expanduser(), _env_file=None))
    engine.load()
    rows = [json.loads(line) for line in (SPEECH / "manifest.jsonl").read_text().splitlines()]
    clips = [decode_audio(SPEECH / r["audio_filepath"]) for r in rows[:5]]
    spent = {"interim": 0, "final": 0}

    def on_done(job) -> None:
        kind = "interim" if job.priority == PRIORITY_INTERIM else "final"
        spent[kind] += job.request.spent

    engine.worker._on_done = on_done
    for prefix in (False, True, False, True):
        spent.update(interim=0, final=0)
        interims, finals = 0, []
        for audio in clips:
            events = asyncio.run(stream(engine, audio, StreamPolicy(prefix_interims=prefix)))
            interims += sum(isinstance(e, Interim) for e in events)
            finals.append(" ".join(e.result.text for e in events if isinstance(e, Final)))
        print(json.dumps({"prefix_interims": prefix, "interims": interims, "interim_row_steps": spent["interim"],
                          "row_steps_per_interim": round(spent["interim"] / max(interims, 1), 1),
                          "final_row_steps": spent["final"], "finals": finals}), flush=True)
    engine.close(5)


if __name__ == "__main__":
    main()
