"""A Conformer/CTC backbone behind the same engine and REST API: rows with different adapters (none,
LoRA, GLoRA, SAML) share one forward pass and get what each gets alone; adapters upload and transcribe
over HTTP; a Whisper adapter is refused with a message that names both backbones."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import pytest
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

from splitasr.adapters import BackboneSpec, adapter_to_bytes, get_kind, new_adapter, resolve_targets
from splitasr.backbones.ctc import write_random_ctc_model
from splitasr.config import Settings
from splitasr.decoding import DecodingOptions
from splitasr.engine.engine import Engine
from tests.adapter_factory import KINDS, adapter_bytes

from .conftest import free_port, start_server

TOKEN = "ctc-token-0123456789abc"
SECONDS = 1.5


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    torch.set_num_threads(1)
    model_dir = write_random_ctc_model(tmp_path_factory.mktemp("ctc") / "conformer", seed=0)
    settings = Settings(backbone=str(model_dir), host="127.0.0.1", port=free_port(), grpc_port=0,
                        cache_dir=tmp_path_factory.mktemp("cache"), adapter_slots=4, adapter_max_rank=8,
                        api_keys=f"{TOKEN}:alice", _env_file=None)
    engine = Engine(settings)
    uvicorn_server, thread = start_server(settings, engine)
    url = f"http://127.0.0.1:{settings.port}"
    deadline = time.monotonic() + 120
    while not engine.ready and time.monotonic() < deadline and not engine.load_error:
        time.sleep(0.1)
    assert engine.ready, engine.load_error
    yield url, engine
    uvicorn_server.should_exit = True
    thread.join(30)


def speech_like(seed: int) -> np.ndarray:
    # equal lengths: the wav2vec2-conformer convolution module does not mask padding, so a padded row
    # would differ from the same row decoded alone for a reason that has nothing to do with adapters
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(SECONDS * 16000)) * 0.1).astype(np.float32)


def ctc_adapter_bytes(spec: BackboneSpec, kind: str, seed: int) -> bytes:
    """A random adapter of ``kind`` on every Conformer linear (a CTC model has no decoder)."""
    hyper, _ = KINDS[kind]
    if kind == "saml":
        hyper = {**hyper, "router_dim": spec.router_dim}
    adapter = new_adapter(kind, get_kind(kind).make_config(**hyper), resolve_targets("all", spec.linear_shapes),
                          spec, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    for group in [*adapter.tensors.values(), adapter.global_tensors]:
        for name, tensor in group.items():
            # far from zero, within the magnitude bounds of splitasr.adapters.bounds
            group[name] = torch.randn(tensor.shape, generator=gen) * (1.0 if name.startswith("router") else 0.1)
    return adapter_to_bytes(adapter)


@pytest.fixture(scope="module")
def shas(server):
    _, engine = server
    return {kind: engine.put_adapter("alice", f"{kind}-1", ctc_adapter_bytes(engine.spec, kind, seed=20 + i)).sha256
            for i, kind in enumerate(("lora", "glora", "saml"))}


def decode_together(engine, rows):
    """Transcribe ``rows`` [(audio, sha)] concurrently through the engine's decode worker."""

    async def main():
        return await asyncio.gather(*(engine.transcribe_audio(a, DecodingOptions(), sha) for a, sha in rows))

    return asyncio.run(main())


def test_mixed_adapter_batch_equals_each_row_alone(server, shas):
    _, engine = server
    plan = [None, shas["lora"], shas["glora"], shas["saml"]]
    rows = [(speech_like(i), sha) for i, sha in enumerate(plan)]
    engine.worker.stats.max_rows = 0
    batched = decode_together(engine, rows)
    assert engine.worker.stats.max_rows >= 2, "concurrent requests should share one forward pass"
    alone = [decode_together(engine, [row])[0] for row in rows]
    assert [b.segments[0].tokens if b.segments else [] for b in batched] == \
           [a.segments[0].tokens if a.segments else [] for a in alone]
    plain = decode_together(engine, [(audio, None) for audio, _ in rows])
    assert sum(p.text != b.text for p, b in zip(plain[1:], batched[1:])) >= 2  # the adapters change the output


def test_rest_upload_and_transcribe_with_an_adapter(server, real_speech):
    url, engine = server
    headers = {"Authorization": f"Bearer {TOKEN}"}
    data = ctc_adapter_bytes(engine.spec, "glora", seed=5)
    up = httpx.post(f"{url}/v1/adapters", headers=headers, files={"file": ("g.safetensors", data)},
                    data={"name": "mine"}, timeout=60)
    assert up.status_code == 201, up.text
    audio = real_speech[0]["path"].read_bytes()
    texts = {}
    for model in ("mine", engine.backbone_name):
        r = httpx.post(f"{url}/v1/audio/transcriptions", headers=headers, files={"file": ("a.flac", audio)},
                       data={"model": model, "response_format": "verbose_json"}, timeout=120)
        assert r.status_code == 200, r.text
        texts[model] = r.json()["text"]
        assert r.json()["segments"]
    assert texts["mine"] != texts[engine.backbone_name]
    beam = httpx.post(f"{url}/v1/audio/transcriptions", headers=headers, files={"file": ("a.flac", audio)},
                      data={"model": "mine", "beam_size": "4"}, timeout=60)
    assert beam.status_code == 400 and "CTC" in beam.text


def test_whisper_adapter_is_refused_by_name(server):
    url, engine = server
    torch.manual_seed(0)
    whisper = WhisperForConditionalGeneration(WhisperConfig(
        vocab_size=100, d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80, pad_token_id=0,
        bos_token_id=1, eos_token_id=2, decoder_start_token_id=1))
    whisper_spec = BackboneSpec.from_model("tiny.en", whisper)
    r = httpx.post(f"{url}/v1/adapters", headers={"Authorization": f"Bearer {TOKEN}"},
                   files={"file": ("w.safetensors", adapter_bytes(whisper_spec, "lora", seed=1))},
                   data={"name": "whisper-one"}, timeout=60)
    assert r.status_code == 400
    message = r.text
    assert "tiny.en" in message and engine.backbone_name in message


def test_grpc_recognize_with_an_adapter(server, real_speech):
    import grpc

    from splitasr.api.rpc.server import BackgroundGrpc
    from splitasr.tenants import ApiKeys
    from splitasr_device._proto import recognizer_pb2 as pb
    from splitasr_device._proto import recognizer_pb2_grpc

    _, engine = server
    engine.put_adapter("alice", "grpc-voice", ctc_adapter_bytes(engine.spec, "saml", seed=9))
    background = BackgroundGrpc(engine.settings, engine, api_keys=ApiKeys.load(None, f"{TOKEN}:alice"))
    try:
        with grpc.insecure_channel(background.address) as channel:
            stub = recognizer_pb2_grpc.RecognizerStub(channel)
            md = (("authorization", f"Bearer {TOKEN}"),)
            audio = real_speech[1]["path"].read_bytes()
            adapted = stub.Recognize(pb.RecognizeRequest(
                config=pb.RecognitionConfig(adapter=pb.AdapterRef(name="grpc-voice"), encoding=pb.ENCODED_FILE),
                audio=audio), metadata=md)
            plain = stub.Recognize(pb.RecognizeRequest(audio=audio), metadata=md)
    finally:
        background.stop()
    assert adapted.text and plain.text and adapted.text != plain.text
    assert adapted.segments[0].words
