"""Load and soak (slow marker), loopback only, against `splitasr serve` in a subprocess.

Eight tenants with two adapters each; REST transcriptions, gRPC ``Recognize`` and gRPC streams at the
same time. Three phases: below capacity (zero errors, p50/p95 per transport), above capacity (only
429 / UNAVAILABLE with a retry delay, with a clear message), and a soak below capacity with the server's resident
memory sampled (flat: the last 10% of the samples within 10% of the peak of the first 20%).

    python -m pytest -m slow tests/reliability/test_soak.py -s
    SPLITASR_SOAK_SECONDS=60 ... for a short run (default 600 s)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import statistics
import threading
import time
from collections import Counter, defaultdict

import grpc
import httpx
import psutil
import pytest

from splitasr_device._proto import adapters_pb2 as apb
from splitasr_device._proto import adapters_pb2_grpc, recognizer_pb2_grpc
from splitasr_device._proto import recognizer_pb2 as pb
from tests.adapter_factory import adapter_bytes
from tests.reliability.conftest import spawn

pytestmark = pytest.mark.slow

TENANTS = [f"tenant{i}" for i in range(8)]
TOKENS = {t: f"{t}-soak-token-0123456789" for t in TENANTS}
CAPACITY = 16  # SPLITASR_MAX_QUEUED_REQUESTS
LOAD_S = float(os.environ.get("SPLITASR_LOAD_SECONDS", "60"))
OVERLOAD_S = 20.0
SOAK_S = float(os.environ.get("SPLITASR_SOAK_SECONDS", "600"))


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.outcomes: Counter = Counter()
        self.unexpected: list[str] = []

    def add(self, transport: str, outcome: str, seconds: float, detail: str = "", expected: bool = True) -> None:
        with self.lock:
            self.outcomes[f"{transport} {outcome}"] += 1
            if outcome == "ok":
                self.latency[transport].append(seconds)
            if not expected:
                self.unexpected.append(f"{transport} {outcome}: {detail[:200]}")

    def summary(self) -> dict:
        out = {"outcomes": dict(self.outcomes)}
        for transport, values in self.latency.items():
            values = sorted(values)
            p95 = values[max(0, math.ceil(0.95 * len(values)) - 1)]  # nearest rank
            out[transport] = {"n": len(values), "p50_s": round(statistics.median(values), 3), "p95_s": round(p95, 3)}
        return out


def run_clients(url, grpc_address, clips, pcm_clips, duration_s, rest_n, grpc_n, stream_n, tally, overload=False):
    stop_at = time.monotonic() + duration_s
    channel = grpc.insecure_channel(grpc_address)
    recognizer = recognizer_pb2_grpc.RecognizerStub(channel)

    def pick(rng):
        tenant = rng.choice(TENANTS)
        model = rng.choice([f"{tenant}-a", f"{tenant}-b", "tiny.en"])
        return tenant, model

    def rest_client(seed):
        rng = random.Random(seed)
        with httpx.Client(timeout=120) as http:
            while time.monotonic() < stop_at:
                tenant, model = pick(rng)
                begin = time.monotonic()
                try:
                    r = http.post(f"{url}/v1/audio/transcriptions", files={"file": ("a.flac", rng.choice(clips))},
                                  data={"model": model}, headers={"Authorization": f"Bearer {TOKENS[tenant]}"})
                except httpx.HTTPError as exc:
                    tally.add("rest", type(exc).__name__, 0, str(exc), expected=False)
                    continue
                if r.status_code == 200:
                    tally.add("rest", "ok", time.monotonic() - begin)
                elif r.status_code == 429 and overload:
                    tally.add("rest", "429", 0, expected="queue is full" in r.text or "capacity" in r.text
                              or "retry" in r.text.lower())
                    time.sleep(0.05)
                else:
                    tally.add("rest", str(r.status_code), 0, r.text, expected=False)

    def grpc_client(seed):
        rng = random.Random(seed)
        while time.monotonic() < stop_at:
            tenant, model = pick(rng)
            config = pb.RecognitionConfig(adapter=pb.AdapterRef(name=model)) if model != "tiny.en" else None
            begin = time.monotonic()
            try:
                recognizer.Recognize(pb.RecognizeRequest(config=config, audio=rng.choice(clips)), timeout=120,
                                     metadata=(("authorization", f"Bearer {TOKENS[tenant]}"),))
                tally.add("grpc", "ok", time.monotonic() - begin)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE and overload:  # a full queue: retry after RetryInfo
                    tally.add("grpc", "UNAVAILABLE", 0)
                    time.sleep(0.05)
                else:
                    tally.add("grpc", exc.code().name, 0, exc.details() or "", expected=False)

    def stream_client(seed):
        rng = random.Random(seed)
        while time.monotonic() < stop_at:
            tenant, model = pick(rng)
            pcm = rng.choice(pcm_clips)
            config = pb.RecognitionConfig(encoding=pb.LINEAR16, sample_rate_hz=16000)
            if model != "tiny.en":
                config.adapter.name = model

            def requests(config=config, pcm=pcm):
                yield pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(
                    config=config, interim_results=True))
                for i in range(0, len(pcm), 3200):
                    yield pb.StreamingRecognizeRequest(audio=pcm[i: i + 3200])
                    time.sleep(0.1)  # real time

            begin = time.monotonic()
            try:
                finals = [r for r in recognizer.StreamingRecognize(
                    requests(), timeout=120, metadata=(("authorization", f"Bearer {TOKENS[tenant]}"),))
                    if r.results and r.results[0].is_final]
                tally.add("stream", "ok" if finals else "no-final", time.monotonic() - begin, expected=bool(finals))
            except grpc.RpcError as exc:
                ok = exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED) and overload
                tally.add("stream", exc.code().name, 0, exc.details() or "", expected=ok)

    threads = ([threading.Thread(target=rest_client, args=(i,)) for i in range(rest_n)]
               + [threading.Thread(target=grpc_client, args=(100 + i,)) for i in range(grpc_n)]
               + [threading.Thread(target=stream_client, args=(200 + i,)) for i in range(stream_n)])
    for t in threads:
        t.start()
    return threads, channel


@pytest.mark.timeout(SOAK_S + LOAD_S + OVERLOAD_S + 900)
def test_load_overload_and_soak(tiny_backbone, cache_root, tmp_path, real_speech):
    from splitasr.adapters import BackboneSpec
    from splitasr.audio import decode_audio

    spec = BackboneSpec.from_model(tiny_backbone.name, tiny_backbone.model)
    keys = tmp_path / "keys.txt"
    keys.write_text("".join(f"{TOKENS[t]} {t}\n" for t in TENANTS))
    server = spawn(cache_root, tmp_path / "store", env={
        "SPLITASR_API_KEYS": "", "SPLITASR_API_KEYS_FILE": str(keys), "SPLITASR_MAX_QUEUED_REQUESTS": str(CAPACITY),
        "SPLITASR_MAX_BATCH_ROWS": "8", "SPLITASR_ADAPTER_SLOTS": "8",
        "SPLITASR_MAX_STREAMS": "8", "SPLITASR_LOG_LEVEL": "warning", "OMP_NUM_THREADS": "2"})
    figures: dict = {}
    try:
        with grpc.insecure_channel(server.grpc_address) as channel:  # half the adapters over each transport
            stub = adapters_pb2_grpc.AdaptersStub(channel)
            for i, tenant in enumerate(TENANTS):
                for j, suffix in enumerate("ab"):
                    data = adapter_bytes(spec, ("lora", "glora", "saml")[(2 * i + j) % 3], seed=2 * i + j)
                    if j == 0:
                        r = httpx.post(f"{server.url}/v1/adapters", files={"file": ("a.safetensors", data)},
                                       data={"name": f"{tenant}-{suffix}"}, timeout=60,
                                       headers={"Authorization": f"Bearer {TOKENS[tenant]}"})
                        assert r.status_code == 201, r.text
                    else:
                        header = apb.UploadHeader(name=f"{tenant}-{suffix}", size=len(data),
                                                  sha256=hashlib.sha256(data).hexdigest())
                        stub.Upload(iter([apb.UploadRequest(header=header), apb.UploadRequest(chunk=data)]),
                                    metadata=(("authorization", f"Bearer {TOKENS[tenant]}"),), timeout=60)
        clips = [r["path"].read_bytes() for r in real_speech[5:]]  # 2-3 s each
        pcm_clips = [(decode_audio(r["path"]) * 32767).astype("<i2").tobytes() + bytes(32000)
                     for r in real_speech[5:8]]
        process = psutil.Process(server.proc.pid)

        # 1. below capacity: 4 REST + 3 gRPC unary clients + 1 stream (8 in flight at most, capacity 16)
        load = Tally()
        threads, ch = run_clients(server.url, server.grpc_address, clips, pcm_clips, LOAD_S, 4, 3, 1, load)
        for t in threads:
            t.join()
        ch.close()
        figures["below_capacity"] = {"seconds": LOAD_S, **load.summary(), "load_average_1m_end": os.getloadavg()[0]}
        print("\nBELOW_CAPACITY " + json.dumps(figures["below_capacity"]), flush=True)
        assert not load.unexpected, load.unexpected[:5]

        # 2. above capacity: 48 clients against a queue of 16
        over = Tally()
        threads, ch = run_clients(server.url, server.grpc_address, clips, pcm_clips, OVERLOAD_S, 28, 20, 0, over,
                                  overload=True)
        for t in threads:
            t.join()
        ch.close()
        figures["above_capacity"] = {"seconds": OVERLOAD_S, **over.summary()}
        print("\nABOVE_CAPACITY " + json.dumps(figures["above_capacity"]), flush=True)
        assert not over.unexpected, over.unexpected[:5]
        assert over.outcomes["rest 429"] > 0 and over.outcomes["grpc UNAVAILABLE"] > 0
        assert over.outcomes["rest ok"] > 0 and over.outcomes["grpc ok"] > 0

        # 3. soak below capacity, resident memory sampled every 5 s
        soak = Tally()
        threads, ch = run_clients(server.url, server.grpc_address, clips, pcm_clips, SOAK_S, 3, 2, 1, soak)
        rss: list[tuple[float, int]] = []
        begin = time.monotonic()
        while any(t.is_alive() for t in threads):
            rss.append((time.monotonic() - begin, process.memory_info().rss))
            time.sleep(5)
        for t in threads:
            t.join()
        ch.close()
        warm = max(m for t, m in rss if t <= SOAK_S * 0.2)  # every adapter has been through the pool by then
        last = [m for t, m in rss if t >= SOAK_S * 0.9]
        figures["soak"] = {"seconds": SOAK_S, **soak.summary(), "load_average_1m_end": os.getloadavg()[0],
                           "rss_mib_first_20pct_max": round(warm / 2**20, 1),
                           "rss_mib_last_10pct_max": round(max(last) / 2**20, 1),
                           "rss_mib_max": round(max(m for _, m in rss) / 2**20, 1),
                           "rss_mib_samples": [round(m / 2**20) for _, m in rss[::max(1, len(rss) // 20)]]}
        print("\nSOAK_FIGURES " + json.dumps(figures))
        (tmp_path.parent / "soak-figures.json").write_text(json.dumps(figures, indent=1))
        assert not soak.unexpected, soak.unexpected[:5]
        assert max(last) < warm * 1.10, "resident memory must stay flat over the soak"
    finally:
        server.stop()
