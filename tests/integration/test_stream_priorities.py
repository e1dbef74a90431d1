"""The end of speech is served first: a real gRPC server, the real decode worker (instrumented: its
admissions held behind a gate and its starts and completions logged) and tiny.en.

Two streams have interims waiting when a third stream's speech ends; when the worker resumes, that
stream's final is decoded before either interim, and its own interim, overtaken, is withdrawn.
The order comes from the scheduler, not from timing: the worker holds one row, so it decodes one
request at a time, in the order it admits them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from splitasr.api.rpc.server import BackgroundGrpc
from splitasr.audio import decode_audio
from splitasr.audio.vad import FRAME_SAMPLES, SileroVad
from splitasr.backbones.whisper import WhisperBackbone
from splitasr.config import Settings
from splitasr.engine.engine import Engine
from splitasr.engine.worker import PRIORITY_FINAL, PRIORITY_INTERIM, DecodeWorker
from splitasr_device._proto import recognizer_pb2 as pb
from splitasr_device._proto import recognizer_pb2_grpc

TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789ab"}
CHUNK_BYTES = 3200  # 100 ms


class GatedWorker:
    """Holds the worker's admissions until ``gate`` is set; logs (event, priority, tenant)."""

    def __init__(self, worker: DecodeWorker):
        self.gate = threading.Event()
        self.log: list[tuple[str, int, str]] = []
        admit, start, done = worker._admit, worker._start, worker._on_done

        def gated_admit() -> None:
            self.gate.wait()
            worker._drop_cancelled()  # what was withdrawn while the gate was shut
            admit()

        def logged_start(job, rows_left):
            self.log.append(("start", job.priority, job.tenant))
            return start(job, rows_left)

        def logged_done(job) -> None:
            self.log.append(("done", job.priority, job.tenant))
            if done:
                done(job)

        worker._admit, worker._start, worker._on_done = gated_admit, logged_start, logged_done
        self.worker = worker

    def queued(self) -> list[tuple[int, str]]:
        return [(j.priority, j.tenant) for j in list(self.worker._queue) if not j.future.done()]


@pytest.fixture(scope="module")
def gated(backbone_cache_dir, tmp_path_factory) -> Iterator[tuple[BackgroundGrpc, GatedWorker]]:
    backbone = WhisperBackbone.load("tiny.en", cache_dir=backbone_cache_dir, device="cpu")
    settings = Settings(host="127.0.0.1", cache_dir=tmp_path_factory.mktemp("prio"), _env_file=None,
                        api_keys=",".join(f"{t}:{n}" for n, t in TOKENS.items()), max_batch_rows=1,
                        max_streams=8)
    engine = Engine(settings, backbone=backbone)
    engine.load()
    gate = GatedWorker(engine.worker)
    server = BackgroundGrpc(settings, engine)
    yield server, gate
    gate.gate.set()
    server.stop()
    engine.close(10)


def _continuous_speech(rows: list[dict], seconds: float = 1.0) -> bytes:
    """LINEAR16 from the start of a fixture to ``seconds`` after its speech onset, with no pause in the
    speech that the stream's VAD would take for its end (found with the same Silero VAD, frame by frame)."""
    for row in rows:
        pcm = (decode_audio(row["path"]) * 32767).astype("<i2")
        audio = pcm.astype(np.float32) / 32768.0
        vad, onset, quiet = SileroVad(), None, 0
        for i in range(len(audio) // FRAME_SAMPLES):
            speech = vad(audio[i * FRAME_SAMPLES: (i + 1) * FRAME_SAMPLES]) >= 0.5
            if onset is None:
                onset = i if speech else None
                continue
            quiet = 0 if speech else quiet + 1
            if quiet >= 3:  # a pause (0.1 s) would start a decode for the final: try the next fixture
                break
            if (i + 1 - onset) * FRAME_SAMPLES >= seconds * 16_000 and speech:
                return pcm[: (i + 1) * FRAME_SAMPLES].tobytes()
    raise AssertionError("no fixture has a second of unbroken speech")


def _requests(pcm: bytes, more: threading.Event | None = None, tail: bytes = b"") -> Iterator:
    yield pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(
        config=pb.RecognitionConfig(encoding=pb.LINEAR16, sample_rate_hz=16000), interim_results=True))
    for i in range(0, len(pcm), CHUNK_BYTES):
        yield pb.StreamingRecognizeRequest(audio=pcm[i: i + CHUNK_BYTES])
    if more is not None:
        more.wait(60)
    for i in range(0, len(tail), CHUNK_BYTES):
        yield pb.StreamingRecognizeRequest(audio=tail[i: i + CHUNK_BYTES])


def _wait_for(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_a_stream_whose_speech_ends_is_decoded_before_other_streams_interims(gated, real_speech):
    server, gate = gated
    speech = _continuous_speech(real_speech)
    silence = b"\0" * 32000  # 1 s: past the endpoint
    responses: dict[str, list] = {}
    more = threading.Event()

    def consume(name: str, tenant: str, requests: Iterator) -> None:
        with grpc.insecure_channel(server.address) as channel:
            stub = recognizer_pb2_grpc.RecognizerStub(channel)
            md = (("authorization", f"Bearer {TOKENS[tenant]}"),)
            responses[name] = list(stub.StreamingRecognize(requests, metadata=md, timeout=120))

    threads = [threading.Thread(target=consume, args=(name, "alice", _requests(speech, more, silence)))
               for name in ("b", "c")]
    for t in threads:
        t.start()
    # both streams have an interim queued (their speech goes on: no pause, no endpoint)
    _wait_for(lambda: gate.queued().count((PRIORITY_INTERIM, "alice")) == 2, "two queued interims")
    a = threading.Thread(target=consume, args=("a", "bob", _requests(speech + silence)))
    a.start()
    threads.append(a)
    # stream a's speech ends: its decode for the final is queued, its interim (if one was) withdrawn
    _wait_for(lambda: (PRIORITY_FINAL, "bob") in gate.queued(), "the decode for stream a's final")
    assert (PRIORITY_INTERIM, "bob") not in gate.queued()
    gate.gate.set()
    a.join(120)
    more.set()
    for t in threads:
        t.join(120)

    a_final = [r for r in responses["a"] if r.results and r.results[0].is_final]
    assert len(a_final) == 1 and a_final[0].results[0].transcript.strip()
    for name in ("b", "c"):
        assert any(r.results and r.results[0].is_final for r in responses[name])
    first = [entry for entry in gate.log if entry[2] == "bob" or entry[1] == PRIORITY_INTERIM][:3]
    assert first == [("start", PRIORITY_FINAL, "bob"), ("done", PRIORITY_FINAL, "bob"),
                     ("start", PRIORITY_INTERIM, "alice")], gate.log
    # stream a needed that one decode: its final reused it (the interim it had queued never ran)
    assert [e for e in gate.log if e[2] == "bob"] == [("start", PRIORITY_FINAL, "bob"), ("done", PRIORITY_FINAL, "bob")]
