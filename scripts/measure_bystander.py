"""What one client's costly requests do to another's, against `splitasr serve` (default settings, two
tenants with keys) on loopback (docs/reliability.md). Prints one JSON object.

    python scripts/measure_bystander.py WORK_DIR PORT [--speech-check false] [--cases noise_10min,...]

Cases (the bystander is tenant "bob" sending a 3 s real-speech clip over REST):
- silence_3h:     alice uploads a 262 KB FLAC of 2 h 58 min of digital silence; bob sends 5 s later.
- noise_10min:    alice uploads 10 min of quiet noise (RMS -60 dBFS); her time and text; bob 5 s later.
- grpc_deadline:  alice's gRPC Recognize of 30 min of speech with pauses, 8 s deadline; bob right after.
- burst_70:       alice sends 70 concurrent 30 s requests; bob sends one REST and one gRPC request.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import soundfile as sf
from splitasr.audio import decode_audio
from splitasr_device._proto import recognizer_pb2 as pb
from splitasr_device._proto import recognizer_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.integration.abandoned import long_speech_flac
from tests.reliability.hostile import silence_flac

SPEECH = ROOT / "tests/data/real-speech"
BYSTANDER = SPEECH / "librivox/0880.flac"  # 3.0 s


def _flac(audio: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, 16000, format="FLAC")
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("port", type=int)
    parser.add_argument("--speech-check", default="true")
    parser.add_argument("--cases", default="silence_3h,noise_10min,grpc_deadline,burst_70")
    args = parser.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    tokens = {"alice": secrets.token_hex(16), "bob": secrets.token_hex(16)}
    keys = args.root / "keys.txt"
    keys.write_text("".join(f"{t} {n}\n" for n, t in tokens.items()))
    grpc_port = args.port + 1
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPLITASR_")}
    env.update(SPLITASR_CACHE_DIR=os.path.expanduser("~/.cache/splitasr"), SPLITASR_STORE_DIR=str(args.root / "store"),
               SPLITASR_PORT=str(args.port), SPLITASR_GRPC_PORT=str(grpc_port), SPLITASR_API_KEYS_FILE=str(keys),
               SPLITASR_FALLBACK_SPEECH_CHECK=args.speech_check)
    with open(args.root / "server.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "splitasr.cli", "serve"], env=env, stderr=log,
                                stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{args.port}"
    headers = {n: {"Authorization": f"Bearer {t}"} for n, t in tokens.items()}
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        bob_clip = BYSTANDER.read_bytes()

        def rest(tenant: str, data: bytes, timeout: float = 600) -> dict:
            start = time.monotonic()
            try:
                r = httpx.post(f"{url}/v1/audio/transcriptions", headers=headers[tenant], timeout=timeout,
                               files={"file": ("a.flac", data)}, data={"model": "tiny.en"})
                out = {"status": r.status_code, "text": r.json().get("text", r.json().get("error", {}).get("code"))}
            except httpx.TimeoutException:
                out = {"status": f"no answer in {timeout:g} s"}
            return {**out, "seconds": round(time.monotonic() - start, 2)}

        def in_background(fn, *a):
            box: dict = {}
            thread = threading.Thread(target=lambda: box.update(fn(*a)))
            thread.start()
            return thread, box

        results: dict = {"speech_check": args.speech_check}
        bob_alone = rest("bob", bob_clip)
        results["bystander_alone_s"] = bob_alone["seconds"]

        cases = set(args.cases.split(","))

        def bob_during(name: str, data: bytes) -> None:
            thread, alice = in_background(rest, "alice", data)
            time.sleep(5)
            bob = rest("bob", bob_clip)
            thread.join()
            results[name] = {"alice": alice, "bob": bob}

        if "silence_3h" in cases:  # 1. three hours of digital silence
            bob_during("silence_3h", silence_flac(2 * 3600 + 58 * 60))
        if "noise_10min" in cases:  # 2. ten minutes of quiet noise
            noise = (np.random.default_rng(0).standard_normal(600 * 16000) * 10 ** (-60 / 20)).astype(np.float32)
            bob_during("noise_10min", _flac(noise))
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}", options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
            stub = recognizer_pb2_grpc.RecognizerStub(ch)
            if "grpc_deadline" in cases:  # 3. a gRPC deadline that passes
                long = long_speech_flac(str(SPEECH / "misc/goforward.flac"), 1800)
                start = time.monotonic()
                try:
                    stub.Recognize(pb.RecognizeRequest(config=pb.RecognitionConfig(encoding=pb.ENCODED_FILE),
                                                       audio=long),
                                   metadata=(("authorization", f"Bearer {tokens['alice']}"),), timeout=8)
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
                alice = {"status": code, "seconds": round(time.monotonic() - start, 2)}
                results["grpc_deadline"] = {"alice": alice, "bob": rest("bob", bob_clip)}
            if "burst_70" in cases:  # 4. one tenant's burst of 70 requests of 30 s
                thirty = _flac(np.concatenate([decode_audio(str(SPEECH / "librivox/0870.flac"))] * 5)[:30 * 16000])
                burst = [in_background(rest, "alice", thirty, 900) for _ in range(70)]
                time.sleep(3)
                bob_rest = rest("bob", bob_clip, 60)
                start = time.monotonic()
                try:
                    reply = stub.Recognize(pb.RecognizeRequest(config=pb.RecognitionConfig(encoding=pb.ENCODED_FILE),
                                                               audio=bob_clip),
                                           metadata=(("authorization", f"Bearer {tokens['bob']}"),), timeout=60)
                    bob_grpc = {"status": "OK", "text": reply.text}
                except grpc.RpcError as exc:
                    bob_grpc = {"status": exc.code().name}
                bob_grpc["seconds"] = round(time.monotonic() - start, 2)
                for thread, _ in burst:
                    thread.join()
                statuses: dict = {}
                for _, box in burst:
                    statuses[str(box.get("status"))] = statuses.get(str(box.get("status")), 0) + 1
                results["burst_70"] = {"alice_statuses": statuses, "bob_rest": bob_rest, "bob_grpc": bob_grpc}
        print(json.dumps(results))
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()
