"""Adapters at use, on a server whose adapter layers cover the decoder only
(``SPLITASR_ADAPTER_TARGETS=decoder``) and which decodes one request at a time (so requests queue).

Refused at upload, with a message naming the cause: a file for layers the server does not adapt.
Accepted and served: a strong adapter just inside the magnitude bounds. Deleted while a request that
names it waits in the queue: the request is served with it, the blob goes once the request is done.
(The files whose values would overflow are in ``hostile.py``, run by ``test_hostile_adapters.py``.)
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import torch

from splitasr.adapters import adapter_to_bytes
from splitasr.adapters.bounds import MAX_FACTOR_NORM
from splitasr.audio import decode_audio, encode_wav_pcm16
from splitasr_device._proto import recognizer_pb2 as pb
from tests.adapter_factory import random_adapter
from tests.reliability.conftest import assert_grpc_error, assert_rest_error, assert_serves_others, serve_both
from tests.reliability.test_hostile_adapters import (
    assert_nothing_stored,
    grpc_upload,
    rest_upload,
    store_files,
)


@pytest.fixture(scope="module")
def service(backbone_cache_dir, tmp_path_factory):
    with serve_both(backbone_cache_dir, tmp_path_factory.mktemp("adapter-use"), adapter_targets="decoder",
                    max_batch_rows=1) as running:  # one row: the long file keeps the others queued
        yield running


@pytest.fixture(scope="module")
def plain_spec(service):
    """The backbone's spec as a client sees it: every linear but the output head is adaptable."""
    return replace(service.engine.spec, adaptable=None, banked=False)


def decoder_only(adapter):
    return replace(adapter, tensors={m: g for m, g in adapter.tensors.items() if ".decoder." in m})


def test_targets_the_server_does_not_adapt_are_refused_at_upload(service, plain_spec, goforward):
    encoder_too = adapter_to_bytes(random_adapter(plain_spec, "lora", seed=40))  # the "attn" preset
    before = store_files(service)
    assert_rest_error(rest_upload(service, encoder_too), 400, "model.encoder.layers", "SPLITASR_ADAPTER_TARGETS")
    assert_grpc_error(lambda: grpc_upload(service, encoder_too), grpc.StatusCode.INVALID_ARGUMENT,
                      "does not adapt", "SPLITASR_ADAPTER_TARGETS")
    assert_nothing_stored(service, before)
    # the same kind of adapter on the decoder alone is what this server takes
    ok = adapter_to_bytes(decoder_only(random_adapter(plain_spec, "lora", seed=40)))
    assert rest_upload(service, ok, name="decoder-lora").status_code == 201
    r = httpx.post(f"{service.url}/v1/audio/transcriptions", files={"file": ("a.flac", goforward)},
                   data={"model": "decoder-lora"}, headers=service.headers(), timeout=120)
    assert r.status_code == 200, r.text
    assert_serves_others(service, goforward)


def scaled(tensor: torch.Tensor, norm: float) -> torch.Tensor:
    return tensor * (norm / float(tensor.norm()))


def test_a_strong_adapter_inside_the_bounds_is_served(service, plain_spec, goforward):
    """‖A‖ = 5, ‖B‖ = 3, alpha/r = 2 on every decoder linear: a gain of 30, just under the limit of 32,
    some six times what trained adapters reach. Uploads and transcribes over both transports."""
    adapter = decoder_only(random_adapter(plain_spec, "lora", seed=41))
    tensors = {m: {"lora_A": scaled(g["lora_A"], 5.0), "lora_B": scaled(g["lora_B"], 3.0)}
               for m, g in adapter.tensors.items()}
    strong = adapter_to_bytes(replace(adapter, tensors=tensors))
    assert adapter.config.scale * 5.0 * 3.0 < MAX_FACTOR_NORM
    r = rest_upload(service, strong, name="strong")
    assert r.status_code == 201, r.text
    r = httpx.post(f"{service.url}/v1/audio/transcriptions", files={"file": ("a.flac", goforward)},
                   data={"model": "strong", "response_format": "verbose_json"}, headers=service.headers(),
                   timeout=300)
    assert r.status_code == 200, r.text
    response = service.recognizer.Recognize(
        pb.RecognizeRequest(config=pb.RecognitionConfig(adapter=pb.AdapterRef(name="strong")), audio=goforward),
        metadata=service.metadata(), timeout=300)
    assert isinstance(response.text, str)
    # twice the gain is refused, naming the module and the bound
    over = {m: {"lora_A": scaled(g["lora_A"], 5.0), "lora_B": scaled(g["lora_B"], 6.0)}
            for m, g in adapter.tensors.items()}
    assert_rest_error(rest_upload(service, adapter_to_bytes(replace(adapter, tensors=over)), name="too-strong"),
                      400, "gain", "over the limit of 32")
    assert_serves_others(service, goforward)


# -- delete while queued ----------------------------------------------------------------------------

def busy_audio(goforward: bytes, seconds: float) -> bytes:
    """``seconds`` of speech (the utterance repeated) as WAV: keeps the one decode worker busy."""
    speech = decode_audio(goforward)
    return encode_wav_pcm16(np.tile(speech, int(seconds * 16_000 / len(speech)) + 1))


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_delete_while_a_request_naming_it_is_queued(service, plain_spec, goforward):
    store = service.engine.store
    victim = adapter_to_bytes(decoder_only(random_adapter(plain_spec, "lora", seed=42)))
    r = rest_upload(service, victim, name="victim")
    assert r.status_code == 201, r.text
    blob = Path(store.blob_path(r.json()["sha256"]))
    long_audio = busy_audio(goforward, 15)
    results: dict[str, object] = {}

    def busy():  # another tenant's long file occupies the worker
        results["busy"] = httpx.post(f"{service.url}/v1/audio/transcriptions", files={"file": ("l.wav", long_audio)},
                                     data={"model": "tiny.en"}, headers=service.headers("bob"), timeout=300)

    def rest():
        results["rest"] = httpx.post(f"{service.url}/v1/audio/transcriptions", files={"file": ("a.flac", goforward)},
                                     data={"model": "victim"}, headers=service.headers(), timeout=300)

    def rpc():
        try:
            results["grpc"] = service.recognizer.Recognize(
                pb.RecognizeRequest(config=pb.RecognitionConfig(adapter=pb.AdapterRef(name="victim")), audio=goforward),
                metadata=service.metadata(), timeout=300).text
        except grpc.RpcError as exc:
            results["grpc"] = exc

    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(busy)
        wait_for(lambda: service.engine.worker.pending >= 1)
        waiting = [pool.submit(rest), pool.submit(rpc)]
        wait_for(lambda: store.pinned_count() == 1 and service.engine.worker.pending >= 3)
        assert not service.engine.pool.resident(r.json()["sha256"]), "the adapter must still be on disk only"
        deleted = httpx.delete(f"{service.url}/v1/adapters/victim", headers=service.headers(), timeout=30)
        assert deleted.status_code == 200, deleted.text
        # the name is gone at once; the blob stays while the queued requests hold it
        held = blob.exists() and store.pinned_count() == 1
        assert httpx.get(f"{service.url}/v1/adapters/victim", headers=service.headers()).status_code == 404
        assert held, "the delete must find the blob held by the queued requests"
        for future in [first, *waiting]:
            future.result()
    assert results["busy"].status_code == 200, results["busy"].text
    assert results["rest"].status_code == 200, results["rest"].text
    assert isinstance(results["grpc"], str), results["grpc"]
    assert store.pinned_count() == 0
    assert not blob.exists(), "the blob goes once the last request holding it is done"
    # a request that names it now gets a clean 404 / NOT_FOUND
    assert_rest_error(httpx.post(f"{service.url}/v1/audio/transcriptions", files={"file": ("a.flac", goforward)},
                                 data={"model": "victim"}, headers=service.headers(), timeout=60), 404, "victim")
    assert_grpc_error(lambda: service.recognizer.Recognize(
        pb.RecognizeRequest(config=pb.RecognitionConfig(adapter=pb.AdapterRef(name="victim")), audio=goforward),
        metadata=service.metadata(), timeout=60), grpc.StatusCode.NOT_FOUND, "victim")
    assert_serves_others(service, goforward)


def test_delete_during_a_stream_that_uses_it(service, plain_spec, goforward):
    """A stream holds its adapter until it ends: deleted mid-stream, the stream still finishes with it."""
    store = service.engine.store
    data = adapter_to_bytes(decoder_only(random_adapter(plain_spec, "lora", seed=43)))
    r = rest_upload(service, data, name="streamed")
    assert r.status_code == 201, r.text
    blob = Path(store.blob_path(r.json()["sha256"]))
    pcm = (np.clip(decode_audio(goforward), -1, 1) * 32767).astype("<i2").tobytes()
    half = threading.Event()

    def requests():
        yield pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(
            config=pb.RecognitionConfig(adapter=pb.AdapterRef(name="streamed"), encoding=pb.LINEAR16,
                                        sample_rate_hz=16_000)))
        chunk = 3200
        for i in range(0, len(pcm), chunk):
            if i >= len(pcm) // 2 and not half.is_set():
                half.set()
                wait_for(lambda: httpx.get(f"{service.url}/v1/adapters/streamed", headers=service.headers()
                                           ).status_code == 404)
            yield pb.StreamingRecognizeRequest(audio=pcm[i: i + chunk])

    def deleter():
        half.wait(60)
        assert httpx.delete(f"{service.url}/v1/adapters/streamed", headers=service.headers()).status_code == 200

    thread = threading.Thread(target=deleter)
    thread.start()
    finals = [result.transcript
              for response in service.recognizer.StreamingRecognize(requests(), metadata=service.metadata(), timeout=120)
              for result in response.results if result.is_final]
    thread.join(10)
    assert "forward" in " ".join(finals).lower(), finals
    assert store.pinned_count() == 0 and not blob.exists()
