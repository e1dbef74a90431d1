"""Load (slow marker): 64 concurrent clients, 32 distinct adapters, 2 minutes, loopback only.

Zero errors below capacity, and the server's resident memory stays flat after warm-up (no upward trend
across the measured window). Warm-up lasts
until every client has had one reply (so the server has run its largest batches and every adapter kind),
then the 2-minute measured window starts.
Run with: python -m pytest -m slow tests/integration/test_load.py -s
"""

from __future__ import annotations

import random
import threading
import time

import httpx
import psutil
import pytest

from tests.adapter_factory import adapter_bytes
from tests.integration.conftest import free_port
from tests.integration.test_crash_safety import TOKEN, start

CLIENTS = 64
ADAPTERS = 32
DURATION_S = 120.0
WARMUP_MAX_S = 180.0


@pytest.mark.slow
def test_sustained_load_with_many_adapters(tiny_backbone, cache_root, tmp_path, real_speech):
    from splitasr.adapters import BackboneSpec

    spec = BackboneSpec.from_model(tiny_backbone.name, tiny_backbone.model)
    port = free_port()
    proc = start(cache_root, tmp_path / "store", port, extra_env={
        "SPLITASR_ADAPTER_SLOTS": "16", "SPLITASR_MAX_QUEUED_REQUESTS": str(2 * CLIENTS),
        "SPLITASR_MAX_BATCH_ROWS": "32"})
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        for i in range(ADAPTERS):
            kind = ("lora", "glora", "saml")[i % 3]
            r = httpx.post(f"{url}/v1/adapters", files={"file": ("a.safetensors", adapter_bytes(spec, kind, seed=i))},
                           data={"name": f"user{i}"}, headers=headers, timeout=60)
            assert r.status_code == 201, r.text
        clips = [r["path"].read_bytes() for r in real_speech[5:]]  # the short ones
        errors: list[str] = []
        latencies: list[float] = []
        stop_at = time.monotonic() + WARMUP_MAX_S + DURATION_S  # moved once warm-up ends
        lock = threading.Lock()

        def client(seed: int) -> None:
            rng = random.Random(seed)
            with httpx.Client(timeout=120) as http:
                while time.monotonic() < stop_at:
                    model = f"user{rng.randrange(ADAPTERS)}" if rng.random() < 0.8 else "tiny.en"
                    begin = time.monotonic()
                    r = http.post(f"{url}/v1/audio/transcriptions", files={"file": ("a.flac", rng.choice(clips))},
                                  data={"model": model}, headers=headers)
                    with lock:
                        latencies.append(time.monotonic() - begin)
                        if r.status_code != 200:
                            errors.append(f"{r.status_code} {r.text[:200]}")

        rss = psutil.Process(proc.pid)
        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        warmup_end = time.monotonic() + WARMUP_MAX_S
        while len(latencies) < CLIENTS and time.monotonic() < warmup_end:
            time.sleep(1)
        stop_at = time.monotonic() + DURATION_S
        warm_requests = len(latencies)
        after_warmup = rss.memory_info().rss
        samples = []
        while any(t.is_alive() for t in threads):
            samples.append(rss.memory_info().rss)
            time.sleep(5)
        for t in threads:
            t.join()
        peak = max(samples)
        latencies.sort()
        print(f"\nwarm-up requests={warm_requests} requests={len(latencies)} errors={len(errors)} "
              f"p50={latencies[len(latencies) // 2]:.2f}s "
              f"p95={latencies[int(len(latencies) * 0.95)]:.2f}s rss_after_warmup={after_warmup / 2**20:.0f}MiB "
              f"rss_peak={peak / 2**20:.0f}MiB rss_end={samples[-1] / 2**20:.0f}MiB")
        assert not errors, errors[:5]
        # Flat = no upward trend: the last third of the window peaks no higher than the first third (+10 %).
        # (Absolute RSS moves with the largest batch the allocator has seen, so compare like with like.)
        third = max(1, len(samples) // 3)
        first, last = max(samples[:third]), max(samples[-third:])
        print(f"rss_peak_first_third={first / 2**20:.0f}MiB rss_peak_last_third={last / 2**20:.0f}MiB")
        assert last < first * 1.10, "memory must stay flat after warm-up"
    finally:
        proc.terminate()
        proc.wait(60)
