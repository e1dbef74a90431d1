"""The adapter store shared by several processes (replicas on one volume): real processes, real files.

Writers in two processes upload at the same time; every name each one stored is there afterwards
and readable from a third process, quotas count every process's uploads, and a blob that a request
in one process holds survives a delete and a sweep made by another until that request lets go.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from splitasr.errors import NotFound
from splitasr.storage.store import AdapterStore

WRITER = r"""
import json, os, sys
from pathlib import Path
from splitasr.storage.store import AdapterStore
from splitasr.errors import TooLarge

root, prefix, count, quota = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
store = AdapterStore(root, max_adapters_per_tenant=quota)
print("ready", flush=True)
sys.stdin.readline()  # both writers start together
stored, refused = [], 0
for i in range(count):
    try:
        store.put("shared", f"{prefix}{i}", os.urandom(2_000 + i), lambda data: "lora")
        stored.append(f"{prefix}{i}")
    except TooLarge:
        refused += 1
print(json.dumps({"stored": stored, "refused": refused}), flush=True)
"""

HOLDER = r"""
import sys
from pathlib import Path
from splitasr.storage.store import AdapterStore

store = AdapterStore(Path(sys.argv[1]))
sha = store.get("alice", "voice").sha256
with store.pinned(sha):
    print("held", flush=True)
    sys.stdin.readline()
    print(len(store.read(sha)), flush=True)  # still readable after the other process's delete
print("released", flush=True)
"""


def _start(script: str, *args: object) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    return proc


def _writers(root: Path, count: int, quota: int) -> list[dict]:
    procs = [_start(WRITER, root, prefix, count, quota) for prefix in ("a", "b")]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready"
    for proc in procs:  # release both at once
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def test_two_processes_uploading_at_once_lose_no_name(tmp_path):
    root = tmp_path / "store"
    results = _writers(root, count=40, quota=100)
    stored = {name for result in results for name in result["stored"]}
    assert len(stored) == 80 and all(r["refused"] == 0 for r in results)
    reader = AdapterStore(root)  # a third process's view (a fresh store object reads only the disk)
    assert {r.name for r in reader.list("shared")} == stored
    for record in reader.list("shared"):
        assert hashlib.sha256(reader.read(record.sha256)).hexdigest() == record.sha256


def test_quota_holds_across_processes(tmp_path):
    root = tmp_path / "store"
    results = _writers(root, count=20, quota=25)
    assert sum(len(r["stored"]) for r in results) == 25
    assert sum(r["refused"] for r in results) == 15
    assert len(AdapterStore(root).list("shared")) == 25


def test_upload_and_delete_in_one_process_are_seen_by_another(tmp_path):
    one, other = AdapterStore(tmp_path), AdapterStore(tmp_path)  # two stores on one folder, no shared memory
    record = one.put("alice", "voice", os.urandom(3000), lambda data: "lora")
    assert other.get("alice", "voice").sha256 == record.sha256
    other.delete("alice", "voice")
    with pytest.raises(NotFound):
        one.get("alice", "voice")
    assert not one.blob_path(record.sha256).exists()


def test_blob_held_by_another_process_survives_delete_and_sweep(tmp_path):
    store = AdapterStore(tmp_path)
    record = store.put("alice", "voice", os.urandom(5000), lambda data: "lora")
    blob = store.blob_path(record.sha256)
    holder = _start(HOLDER, tmp_path)
    try:
        assert holder.stdout.readline().strip() == "held"
        store.delete("alice", "voice")  # the name goes at once ...
        with pytest.raises(NotFound):
            store.get("alice", "voice")
        assert blob.exists()  # ... the blob stays while the other process's request holds it
        assert AdapterStore(tmp_path).sweep()["removed_blobs"] == 0  # a restarting replica's sweep too
        assert blob.exists()
        holder.stdin.write("done\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "5000"
        assert holder.stdout.readline().strip() == "released"
        assert holder.wait(30) == 0
    finally:
        holder.kill()
    assert not blob.exists()  # the last holder removed it
    assert not list(tmp_path.glob("blobs/*/*.doomed"))


def test_a_request_in_flight_in_this_process_blocks_removal_by_another(tmp_path):
    one, other = AdapterStore(tmp_path), AdapterStore(tmp_path)
    record = one.put("alice", "voice", os.urandom(4000), lambda data: "lora")
    with one.pinned(record.sha256):
        other.delete("alice", "voice")
        assert one.blob_path(record.sha256).exists()
        assert len(one.read(record.sha256)) == 4000
    assert not one.blob_path(record.sha256).exists()
    with pytest.raises(NotFound), one.pinned(record.sha256):
        pass
