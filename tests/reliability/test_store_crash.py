"""The adapter store after a crash: nothing unreferenced stays, nothing referenced is lost.

A process that writes to the store (uploads and deletes, the real ``AdapterStore``) is SIGKILLed at
random moments; after each kill the store is opened again, as a restarted server opens it, and must
hold no temp file, no blob that no name points at, and every name's blob intact (its sha256 is its
name). The slow test does the same to a real ``splitasr serve`` under REST uploads and deletes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from splitasr.storage.store import AdapterStore
from tests.adapter_factory import adapter_bytes
from tests.reliability.conftest import TOKENS, spawn

WRITER = r"""
import os, random, sys
from pathlib import Path
from splitasr.storage.store import AdapterStore

store = AdapterStore(Path(sys.argv[1]))
rng = random.Random(int(sys.argv[2]))
print("ready", flush=True)
while True:
    tenant, name = rng.choice(["alice", "bob"]), f"a{rng.randrange(6)}"
    if rng.random() < 0.6:
        store.put(tenant, name, os.urandom(rng.randrange(1_000, 300_000)), lambda data: "lora")
    else:
        try:
            store.delete(tenant, name)
        except Exception:
            pass
"""


def leftovers(root: Path) -> tuple[list[Path], list[str], list[str]]:
    """(temp files, blobs no name points at, names whose blob is missing or corrupt) under ``root``."""
    temp = sorted(root.rglob(".*.tmp"))
    referenced: dict[str, str] = {}
    for index in (root / "tenants").glob("*.json"):
        for name, record in json.loads(index.read_text()).items():
            referenced[record["sha256"]] = f"{index.stem}/{name}"
    blobs = {p.name.removesuffix(".safetensors"): p for p in (root / "blobs").glob("*/*.safetensors")}
    orphans = sorted(set(blobs) - set(referenced))
    broken = sorted(who for sha, who in referenced.items()
                    if sha not in blobs or hashlib.sha256(blobs[sha].read_bytes()).hexdigest() != sha)
    return temp, orphans, broken


def test_sigkill_during_uploads_and_deletes_leaves_nothing_after_restart(tmp_path, caplog):
    root = tmp_path / "store"
    rng = random.Random(16)
    left_by_kills = {"orphans": 0, "temp": 0}
    caplog.set_level(logging.INFO, logger="splitasr.storage.store")
    for round_ in range(20):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(round_)], stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        temp, orphans, broken = leftovers(root)
        assert not broken, f"round {round_}: a stored name lost its blob: {broken}"
        left_by_kills["orphans"] += len(orphans)
        left_by_kills["temp"] += len(temp)
        AdapterStore(root)  # what a restarted server does first
        assert leftovers(root) == ([], [], []), f"round {round_}"
    swept = [r for r in caplog.records if "blobs no name points at" in r.getMessage()]
    assert sum(r.removed_blobs for r in swept) == left_by_kills["orphans"]
    assert sum(r.removed_temp_files for r in swept) == left_by_kills["temp"]
    print(f"20 SIGKILLs left {left_by_kills['orphans']} unreferenced blobs and {left_by_kills['temp']} temp files; "
          "all removed at the next start")


def test_the_periodic_sweep_spares_blobs_in_use(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="splitasr.storage.store")
    store = AdapterStore(tmp_path, sweep_interval_s=0.2)
    try:
        kept = store.put("alice", "kept", b"kept adapter bytes", lambda data: "lora")
        held = store.put("alice", "held", b"held adapter bytes", lambda data: "lora")
        orphan = store.blob_path("ab" * 32)
        orphan.parent.mkdir(parents=True, exist_ok=True)
        orphan.write_bytes(b"left by a crash")
        temp = store.blob_path(kept.sha256).parent / ".x.safetensors.abc.tmp"
        temp.write_bytes(b"half")
        with store.pinned(held.sha256):
            store.delete("alice", "held")
            deadline = time.monotonic() + 10
            while (orphan.exists() or temp.exists()) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not orphan.exists() and not temp.exists()
            assert store.blob_path(held.sha256).exists(), "a blob a request holds survives the sweep"
        assert not store.blob_path(held.sha256).exists(), "and goes when the request lets go"
        assert store.read(kept.sha256) == b"kept adapter bytes"
    finally:
        store.close()
    lines = [r.getMessage() for r in caplog.records if "blobs no name points at" in r.getMessage()]
    assert any("removed 1 blobs no name points at and 1 temp files" in line for line in lines), lines


@pytest.mark.slow
def test_sigkill_of_a_serving_process_during_uploads_and_deletes(backbone_cache_dir, tmp_path, tiny_backbone,
                                                                goforward):
    """5 SIGKILLs of `splitasr serve` while 3 clients upload and delete over REST; after each restart
    the store is clean and every listed adapter transcribes."""
    from splitasr.adapters import BackboneSpec

    spec = BackboneSpec.from_model(tiny_backbone.name, tiny_backbone.model)
    files = [adapter_bytes(spec, "lora", seed=60 + i) for i in range(6)]
    store = tmp_path / "store"
    totals = {"orphans": 0, "temp": 0}
    for round_ in range(5):
        server = spawn(backbone_cache_dir.parent, store, env={"SPLITASR_ADAPTER_SLOTS": "2"})
        assert leftovers(store) == ([], [], [])
        if round_:
            listed = httpx.get(f"{server.url}/v1/adapters", headers={"Authorization": f"Bearer {TOKENS['alice']}"},
                               timeout=30).json()["data"]
            if listed:
                r = httpx.post(f"{server.url}/v1/audio/transcriptions", files={"file": ("a.flac", goforward)},
                               data={"model": listed[0]["id"]}, timeout=120,
                               headers={"Authorization": f"Bearer {TOKENS['alice']}"})
                assert r.status_code == 200, r.text
        stop = threading.Event()

        def client(seed: int, server=server, stop=stop) -> None:
            rng = random.Random(seed)
            headers = {"Authorization": f"Bearer {TOKENS[rng.choice(['alice', 'bob'])]}"}
            while not stop.is_set():
                name = f"a{rng.randrange(4)}"
                try:
                    if rng.random() < 0.6:
                        httpx.post(f"{server.url}/v1/adapters", files={"file": ("a", rng.choice(files))},
                                   data={"name": name}, headers=headers, timeout=10)
                    else:
                        httpx.delete(f"{server.url}/v1/adapters/{name}", headers=headers, timeout=10)
                except httpx.TransportError:
                    return

        threads = [threading.Thread(target=client, args=(round_ * 10 + i,)) for i in range(3)]
        for t in threads:
            t.start()
        time.sleep(random.Random(round_).uniform(1.0, 3.0))
        server.kill()
        stop.set()
        for t in threads:
            t.join(30)
        temp, orphans, broken = leftovers(store)
        assert not broken
        totals["orphans"] += len(orphans)
        totals["temp"] += len(temp)
    server = spawn(backbone_cache_dir.parent, store)
    server.stop()
    assert leftovers(store) == ([], [], [])
    print(f"5 SIGKILLs of splitasr serve left {totals['orphans']} unreferenced blobs and {totals['temp']} temp "
          "files; all removed at the next start")
