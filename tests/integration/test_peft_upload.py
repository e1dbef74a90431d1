"""POST /v1/adapters with a zipped PEFT LoRA folder: converted, validated, stored, usable as `model`."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest

from splitasr.adapters import export_peft
from tests.adapter_factory import random_adapter
from tests.files import zip_bytes


def upload(server, data: bytes, name: str, filename: str = "peft.zip", **fields) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/adapters", files={"file": (filename, data)}, data={"name": name, **fields},
                      headers=server.headers("alice"), timeout=120)


def names(server) -> set[str]:
    r = httpx.get(f"{server.url}/v1/adapters", headers=server.headers("alice"), timeout=30)
    return {a["id"] for a in r.json()["data"]}


@pytest.fixture(scope="module")
def peft_files(rest_server, tmp_path_factory) -> dict[str, bytes]:
    adapter = random_adapter(rest_server.engine.spec, "lora", seed=11, std=0.05)
    out = export_peft(adapter, tmp_path_factory.mktemp("peft") / "me")
    return {p.name: p.read_bytes() for p in out.iterdir()}


def transcribe(server, path, model: str) -> str:
    r = httpx.post(f"{server.url}/v1/audio/transcriptions", files={"file": ("a.flac", path.read_bytes())},
                   data={"model": model}, headers=server.headers("alice"), timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["text"]


def test_zipped_peft_folder_is_converted_and_serves(rest_server, peft_files, real_speech):
    from splitasr.adapters import adapter_to_bytes, import_peft

    data = zip_bytes(peft_files, folder="my-lora/")
    r = upload(rest_server, data, "peft-lora", sha256=hashlib.sha256(data).hexdigest())
    assert r.status_code == 201, r.text
    card = r.json()
    assert card["kind"] == "lora" and card["converted_from"] == "peft"
    # stored under the hash of the converted file: what `splitasr adapter import-peft` writes for it
    converted = adapter_to_bytes(import_peft(data, rest_server.engine.spec, creator="peft-upload"))
    assert card["sha256"] == hashlib.sha256(converted).hexdigest()
    r = upload(rest_server, converted, "peft-lora-file", filename="me.safetensors")
    assert r.status_code == 201 and r.json()["sha256"] == card["sha256"] and "converted_from" not in r.json()
    path = real_speech[1]["path"]
    assert transcribe(rest_server, path, "peft-lora") == transcribe(rest_server, path, "peft-lora-file")


def _bomb(peft_files) -> bytes:
    return zip_bytes({**peft_files, "padding.bin": b"\0" * (20 << 20)})


@pytest.mark.parametrize(("make", "words"), [
    (_bomb, ("zip bomb",)),
    (lambda f: zip_bytes({"adapter_config.json": f["adapter_config.json"]}), ("adapter_model.safetensors",)),
    (lambda f: zip_bytes({"../adapter_config.json": f["adapter_config.json"],
                       "adapter_model.safetensors": f["adapter_model.safetensors"]}), ("unsafe path",)),
    (lambda f: zip_bytes({**f, "adapter_config.json": json.dumps(
        {**json.loads(f["adapter_config.json"]), "use_dora": True}).encode()}), ("use_dora",)),
    (lambda f: zip_bytes(f)[:200], ("zip",)),
])
def test_bad_peft_zips_are_refused_and_nothing_is_stored(rest_server, peft_files, make, words):
    before = names(rest_server)
    r = upload(rest_server, make(peft_files), "bad-peft")
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert all(w in message for w in words), message
    assert names(rest_server) == before


def test_announced_sha256_of_the_zip_is_checked(rest_server, peft_files):
    r = upload(rest_server, zip_bytes(peft_files), "peft-sha", sha256="0" * 64)
    assert r.status_code == 400 and "corrupt" in r.json()["error"]["message"]
    assert "peft-sha" not in names(rest_server)
