"""The latency the Ray Serve hop adds: the same request, alternately, to `splitasr serve --replicas N`
and to a single-process `splitasr serve` (both already running). Prints one JSON object.

    python scripts/measure_ingress_hop.py http://127.0.0.1:8718 http://127.0.0.1:8719 --requests 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import httpx

AUDIO = Path(__file__).resolve().parents[1] / "tests" / "data" / "real-speech"


def timed(client: httpx.Client, url: str, audio: bytes | None) -> float:
    start = time.perf_counter()
    if audio is None:
        r = client.get(f"{url}/v1/models")
    else:
        r = client.post(f"{url}/v1/audio/transcriptions", files={"file": ("a.flac", audio)},
                        data={"model": "tiny.en"})
    r.raise_for_status()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scaled_url")
    parser.add_argument("single_url")
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    audio = next(AUDIO.rglob("goforward.flac")).read_bytes()
    urls = {"scaled": args.scaled_url.rstrip("/"), "single": args.single_url.rstrip("/")}
    decode = {k: [] for k in urls}
    models = {k: [] for k in urls}
    with httpx.Client(timeout=120) as client:
        for url in urls.values():  # warm both
            timed(client, url, audio)
        for i in range(args.requests):
            for name in (("scaled", "single") if i % 2 == 0 else ("single", "scaled")):  # alternate the order
                decode[name].append(timed(client, urls[name], audio))
                models[name].append(timed(client, urls[name], None))
    median = {k: {"transcription_s": round(statistics.median(decode[k]), 4),
                  "models_s": round(statistics.median(models[k]), 4)} for k in urls}
    print(json.dumps({"requests": args.requests, "median": median,
                      "added_by_ray_s": round(median["scaled"]["transcription_s"] - median["single"]["transcription_s"], 4),
                      "ratio": round(median["scaled"]["transcription_s"] / median["single"]["transcription_s"], 3)},
                     indent=1))


if __name__ == "__main__":
    main()
