"""`splitasr adapter new`: a file that `adapter inspect` validates, the server accepts, and that shows."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest
import torch

from splitasr.adapters import adapter_to_bytes, load_adapter
from splitasr.adapters.sample import sample_adapter


def splitasr(*args: str, cache_root) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPLITASR_CACHE_DIR": str(cache_root)}
    return subprocess.run([sys.executable, "-m", "splitasr.cli", *args], capture_output=True, text=True,
                          env=env, timeout=600, check=False)


def upload(server, data: bytes, name: str) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/adapters", files={"file": (f"{name}.safetensors", data)},
                      data={"name": name}, headers=server.headers("alice"), timeout=120)


def transcripts(server, rows, model: str) -> list[str]:
    texts = []
    for row in rows:
        r = httpx.post(f"{server.url}/v1/audio/transcriptions", files={"file": ("a.flac", row["path"].read_bytes())},
                       data={"model": model}, headers=server.headers("alice"), timeout=120)
        assert r.status_code == 200, r.text
        texts.append(r.json()["text"])
    return texts


@pytest.fixture(scope="module")
def rows(real_speech):
    return [real_speech[i] for i in (1, 5, 9, 10)]


def test_new_adapter_is_valid_accepted_and_changes_output(rest_server, cache_root, tmp_path, rows):
    path = tmp_path / "me.safetensors"
    made = splitasr("adapter", "new", "--out", str(path), "--json", cache_root=cache_root)
    assert made.returncode == 0, made.stderr
    report = json.loads(made.stdout)
    assert report["kind"] == "lora" and report["backbone"]["name"] == "tiny.en" and report["parameters"] > 0
    inspected = splitasr("adapter", "inspect", str(path), "--backbone", "tiny.en", "--json", cache_root=cache_root)
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["parameters"] == report["parameters"]

    r = upload(rest_server, path.read_bytes(), "sample-voice")
    assert r.status_code == 201 and r.json()["kind"] == "lora", r.text
    plain, adapted = transcripts(rest_server, rows, "tiny.en"), transcripts(rest_server, rows, "sample-voice")
    assert all(adapted) and plain != adapted, "a sample adapter must visibly change some transcripts"

    again = tmp_path / "again.safetensors"
    assert splitasr("adapter", "new", "--out", str(again), cache_root=cache_root).returncode == 0
    a, b = load_adapter(path), load_adapter(again)
    assert all(torch.equal(t, b.tensors[m][n]) for m, g in a.tensors.items() for n, t in g.items()), "same seed"


def test_zero_adapter_changes_nothing(rest_server, cache_root, tmp_path, rows):
    path = tmp_path / "zero.safetensors"
    made = splitasr("adapter", "new", "--out", str(path), "--zero", "--kind", "glora", cache_root=cache_root)
    assert made.returncode == 0 and "zero update" in made.stdout, made.stderr
    assert upload(rest_server, path.read_bytes(), "zero-voice").status_code == 201
    assert transcripts(rest_server, rows, "zero-voice") == transcripts(rest_server, rows, "tiny.en")


@pytest.mark.parametrize("kind", ["glora", "saml"])
def test_every_kind_is_accepted(rest_server, kind, rows):
    adapter = sample_adapter(rest_server.engine.spec, kind, seed=3)
    r = upload(rest_server, adapter_to_bytes(adapter), f"sample-{kind}")
    assert r.status_code == 201 and r.json()["kind"] == kind, r.text
    assert all(transcripts(rest_server, rows[:2], f"sample-{kind}"))
