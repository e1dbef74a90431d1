"""Server RSS while `splitasr serve` (default settings) takes a 262 KB FLAC of 2 h 58 min of silence
over REST, sampled for 40 s (docs/reliability.md). Prints JSON.

    python scripts/measure_request_memory.py WORK_DIR PORT
"""
import json
import os
import subprocess
import sys
import threading
import time

import httpx
import psutil

port = int(sys.argv[2]); root = sys.argv[1]; os.makedirs(root, exist_ok=True)
env = {k: v for k, v in os.environ.items() if not k.startswith("SPLITASR_")}
env.update(SPLITASR_CACHE_DIR=os.path.expanduser("~/.cache/splitasr"), SPLITASR_STORE_DIR=f"{root}/store", SPLITASR_PORT=str(port),
           SPLITASR_GRPC_PORT="0", SPLITASR_LOG_FORMAT="json")
log = open(f"{root}/server.log", "wb")
proc = subprocess.Popen([sys.executable, "-m", "splitasr.cli", "serve"], env=env, stderr=log, stdout=subprocess.DEVNULL)
url = f"http://127.0.0.1:{port}"
try:
    for _ in range(300):
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200: break
        except httpx.TransportError: pass
        time.sleep(0.3)
    ps = psutil.Process(proc.pid); base = ps.memory_info().rss; peak = base; samples = []
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from tests.reliability.hostile import silence_flac

    data = silence_flac(2 * 3600 + 58 * 60)  # 8 kHz, 262 KB
    result = {}
    def send():
        try:
            r = httpx.post(f"{url}/v1/audio/transcriptions", files={"file": ("s.flac", data)}, data={"model": "tiny.en"}, timeout=40)
            result["status"] = r.status_code
        except httpx.TimeoutException: result["status"] = "still running at 40 s"
    t = threading.Thread(target=send); t0 = time.monotonic(); t.start()
    while t.is_alive():
        rss = ps.memory_info().rss; peak = max(peak, rss)
        if not samples or time.monotonic() - t0 >= len(samples) * 5: samples.append(round((rss - base) / 2**20))
        time.sleep(0.1)
    print(json.dumps({"file_kb": len(data) // 1024, "baseline_mib": round(base / 2**20), "peak_delta_mib": round((peak - base) / 2**20),
                      "delta_every_5s_mib": samples, **result}))
finally:
    proc.kill(); proc.wait()
