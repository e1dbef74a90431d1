"""Adapters that would validate and then break at use, on a server whose adapter layers cover the
decoder only (``SPLITASR_ADAPTER_TARGETS=decoder``).

Refused at upload, with a message naming the cause: a file for layers the server does not adapt.
Accepted and served: a strong adapter just inside the magnitude bounds.
(The files whose values would overflow are in ``hostile.py``, run by ``test_hostile_adapters.py``.)
"""

from __future__ import annotations

from dataclasses import replace

import grpc
import httpx
import pytest
import torch
from splitasr.adapters import adapter_to_bytes
from splitasr.adapters.bounds import MAX_FACTOR_NORM
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
    with serve_both(backbone_cache_dir, tmp_path_factory.mktemp("adapter-use"), adapter_targets="decoder") as running:
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
