"""The rescorer on the real tiny.en backbone, the real MiniLM encoder and real speech: N-best lists,
REST ``rescore`` end to end, and the command line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
import torch
import uvicorn

from splitasr.adapters import KindConfig, new_adapter
from splitasr.audio import decode_audio
from splitasr.datasets.manifest import load_manifest
from splitasr.decoding import DecodingOptions, nbest
from splitasr.rescoring.data import decode_lists, normalize, word_errors
from splitasr.rescoring.encoder import load_encoder
from splitasr.rescoring.fileformat import save_rescorer
from splitasr.rescoring.model import Fusion, Rescorer, choose, encoder_targets
from splitasr.rescoring.second_pass import open_rescorer
from splitasr.rescoring.train import score_lists
from tests.conftest import REAL_SPEECH_DIR

TOKEN = "rescore-token-0123456789"


@pytest.fixture(scope="module")
def encoder():
    return load_encoder()


def random_rescorer(encoder, head_sign: float = 1.0) -> Rescorer:
    """A rescorer with non-zero LoRA and head; a huge λ lets the rescorer alone decide."""
    lora = new_adapter("lora", KindConfig(r=2, alpha=4.0), encoder_targets(encoder, "qv"), encoder.spec, seed=5)
    g = torch.Generator().manual_seed(5)
    for tensors in lora.tensors.values():
        tensors["lora_B"] = torch.randn(tensors["lora_B"].shape, generator=g) * 0.05
    head = torch.randn(encoder.hidden_size, generator=g) * head_sign
    return Rescorer(lora, head, torch.zeros(1), fusion=Fusion(1e4, 0.0), asr_backbone="tiny.en")


def test_nbest_lists_are_real(tiny_backbone):
    utterances = load_manifest(REAL_SPEECH_DIR / "manifest.jsonl")[:2]
    lists = decode_lists(tiny_backbone, utterances, 4, quiet=True)
    for x, u in zip(lists, utterances):
        assert len(x.hyps) == 4 and len(set(x.hyps)) == 4, x.hyps
        assert all(a < 0 for a in x.asr) and all(n >= 2 for n in x.lengths)
        assert x.errors == [word_errors(normalize(u.text).split(), normalize(h).split()) for h in x.hyps]
        assert x.ref_words == len(normalize(u.text).split())


def _serve(tiny_backbone, tmp_path):
    from splitasr.api.rest.app import create_app
    from splitasr.config import Settings
    from splitasr.engine.engine import Engine

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(host="127.0.0.1", port=port, cache_dir=tmp_path, store_dir=tmp_path / "store",
                        api_keys=f"{TOKEN}:carol", rescorer_slots=2, _env_file=None)
    config = uvicorn.Config(create_app(settings, Engine(settings, backbone=tiny_backbone)), host="127.0.0.1",
                            port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return server, thread, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail("server did not become ready")


def test_rest_rescore_end_to_end(tiny_backbone, real_speech, encoder, tmp_path):
    clip = real_speech[0]["path"]
    [hyps] = nbest(tiny_backbone, [decode_audio(clip)], DecodingOptions(nbest=4))
    texts = [h.text for h in hyps]
    # pick the head sign whose choice is not the beam's first hypothesis, so rescoring visibly acts
    for sign in (1.0, -1.0):
        rescorer = random_rescorer(encoder, sign)
        path = save_rescorer(tmp_path / f"r{sign}.safetensors", rescorer)
        model, loaded = open_rescorer(path)
        from splitasr.rescoring.data import make_list

        x = make_list("", texts, [h.logprob for h in hyps], [len(h.tokens) + 1 for h in hyps])
        pick = choose(x, score_lists(model, [x], 1)[0], loaded.fusion)
        if pick != 0:
            break
    assert pick != 0
    server, thread, url = _serve(tiny_backbone, tmp_path)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        up = httpx.post(f"{url}/v1/adapters", headers=auth, data={"name": "my-words"},
                        files={"file": ("r.safetensors", path.read_bytes())})
        assert up.status_code == 201, up.text
        assert up.json()["kind"] == "lorb"
        models = httpx.get(f"{url}/v1/models", headers=auth).json()["data"]
        assert "my-words" not in [m["id"] for m in models]  # a rescorer is not a model
        audio = clip.read_bytes()

        def post(**fields):
            return httpx.post(f"{url}/v1/audio/transcriptions", headers=auth, files={"file": ("a.flac", audio)},
                              data={"model": "tiny.en", "response_format": "verbose_json", **fields}, timeout=120)

        from splitasr.observability import REGISTRY

        def pool(event: str) -> float:
            return REGISTRY.get_sample_value(f"splitasr_rescorer_pool_{event}_total") or 0.0

        misses, hits = pool("misses"), pool("hits")
        plain, rescored = post(), post(rescore="my-words")
        assert plain.status_code == 200 and rescored.status_code == 200, rescored.text
        assert pool("misses") == misses + 1 and pool("hits") == hits  # loaded into a slot once
        assert REGISTRY.get_sample_value("splitasr_rescorer_pool_occupancy") >= 1
        body = rescored.json()
        assert body["text"] == texts[pick] != plain.json()["text"]
        assert body["nbest"][0]["text"] == texts[pick] and len(body["nbest"]) == 4
        assert body["segments"][0]["text"] == texts[pick]
        missing = post(rescore="nope")
        assert missing.status_code == 404 and "rescorer 'nope' does not exist" in missing.text
        as_model = post(model="my-words")
        assert as_model.status_code == 400 and "rescore" in as_model.text
        # a rescorer named "default" applies when a request names none; rescore=none turns it off
        up = httpx.post(f"{url}/v1/adapters", headers=auth, data={"name": "default"},
                        files={"file": ("r.safetensors", path.read_bytes())})
        assert up.status_code == 201, up.text
        assert post().json()["text"] == texts[pick]
        assert post(rescore="none").json()["text"] == plain.json()["text"]
        assert pool("misses") == misses + 1 and pool("hits") >= hits + 1  # same bytes: the resident slot
    finally:
        server.should_exit = True
        thread.join(30)


def splitasr(*args: str, cache_root) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPLITASR_CACHE_DIR": str(cache_root), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "splitasr.cli", *args], capture_output=True, text=True,
                          env=env, timeout=600, check=False)


@pytest.mark.slow
def test_cli_train_caches_nbest_and_eval(tmp_path, cache_root, tiny_backbone):
    rows = (REAL_SPEECH_DIR / "manifest.jsonl").read_text().splitlines()
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("\n".join(json.dumps({**json.loads(r), "audio_filepath": str(REAL_SPEECH_DIR / json.loads(r)[
        "audio_filepath"])}) for r in rows[:3]) + "\n")
    out = tmp_path / "r.safetensors"
    args = ("rescorer", "train", "--manifest", str(manifest), "--out", str(out), "--nbest", "3", "--epochs", "1",
            "--json")
    first = splitasr(*args, cache_root=cache_root)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["nbest_cached"]["train"] is False and (tmp_path / "r.nbest-train.json").is_file()
    assert 0 < report["trainable_fraction"] < 0.01
    again = json.loads(splitasr(*args, cache_root=cache_root).stdout)
    assert again["nbest_cached"]["train"] is True
    ev = splitasr("eval", "--manifest", str(manifest), "--rescorer", str(out), "--json", cache_root=cache_root)
    assert ev.returncode == 0, ev.stderr
    assert {"wer", "wer_first_pass", "wer_oracle"} <= set(json.loads(ev.stdout))
    clip = REAL_SPEECH_DIR / json.loads(rows[0])["audio_filepath"]
    tr = splitasr("transcribe", str(clip), "--rescorer", str(out), "--format", "json", cache_root=cache_root)
    assert tr.returncode == 0, tr.stderr
    body = json.loads(tr.stdout)
    assert len(body["nbest"]) == 4 and body["text"] == body["nbest"][0]["text"]


def test_grpc_recognize_with_rescore(tiny_backbone, real_speech, encoder, tmp_path):
    import grpc

    from splitasr.api.rpc.server import BackgroundGrpc
    from splitasr.config import Settings
    from splitasr.engine.engine import Engine
    from splitasr_device._proto import recognizer_pb2 as pb
    from splitasr_device._proto import recognizer_pb2_grpc

    clip = real_speech[0]["path"]
    [hyps] = nbest(tiny_backbone, [decode_audio(clip)], DecodingOptions(nbest=4))
    rescorer = random_rescorer(encoder, -1.0)
    model, _ = open_rescorer(save_rescorer(tmp_path / "r.safetensors", rescorer))
    from splitasr.rescoring.data import make_list

    x = make_list("", [h.text for h in hyps], [h.logprob for h in hyps], [len(h.tokens) + 1 for h in hyps])
    expected = x.hyps[choose(x, score_lists(model, [x], 1)[0], rescorer.fusion)]
    settings = Settings(host="127.0.0.1", cache_dir=tmp_path, store_dir=tmp_path / "store", _env_file=None,
                        api_keys=f"{TOKEN}:carol")
    engine = Engine(settings, backbone=tiny_backbone)
    engine.load()
    engine.put_adapter("carol", "my-words", (tmp_path / "r.safetensors").read_bytes())
    server = BackgroundGrpc(settings, engine)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = recognizer_pb2_grpc.RecognizerStub(channel)
            meta = (("authorization", f"Bearer {TOKEN}"),)
            config = pb.RecognitionConfig(encoding=pb.ENCODED_FILE, rescore="my-words")
            reply = stub.Recognize(pb.RecognizeRequest(config=config, audio=clip.read_bytes()), metadata=meta)
            assert reply.text == expected
            with pytest.raises(grpc.RpcError) as err:
                stub.Recognize(pb.RecognizeRequest(config=pb.RecognitionConfig(rescore="nope"),
                                                   audio=clip.read_bytes()), metadata=meta)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        server.stop()
        engine.close(10)
