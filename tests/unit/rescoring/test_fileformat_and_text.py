"""Rescorer files (round trip, every validation failure names its cause) and text-only lists."""

from __future__ import annotations

import json
import struct

import pytest
import safetensors.torch
import torch
from safetensors.torch import load as safetensors_from_bytes  # safetensors only: never pickle

from splitasr.errors import InvalidAdapter
from splitasr.rescoring.fileformat import (
    METADATA_KEY,
    is_rescorer_file,
    load_rescorer,
    rescorer_to_bytes,
    save_rescorer,
)
from splitasr.rescoring.model import Fusion, encoder_targets
from splitasr.rescoring.textonly import Confuser, read_sentences, sound_key, synthesize_lists

from .conftest import random_rescorer, tiny_encoder


@pytest.fixture(scope="module")
def encoder():
    return tiny_encoder()


@pytest.fixture(scope="module")
def good(encoder) -> bytes:
    rescorer = random_rescorer(encoder, encoder_targets(encoder, "qv"), seed=3, rank=2)
    rescorer.fusion = Fusion(0.5, -0.1)
    return rescorer_to_bytes(rescorer)


def _rewrite(data: bytes, tensors=None, meta_update=None, meta_drop=()) -> bytes:
    loaded = safetensors_from_bytes(data)
    (n,) = struct.unpack("<Q", data[:8])
    meta = json.loads(json.loads(data[8 : 8 + n])["__metadata__"][METADATA_KEY])
    meta.update(meta_update or {})
    for key in meta_drop:
        meta.pop(key)
    if tensors:
        tensors(loaded)
    return safetensors.torch.save(loaded, metadata={METADATA_KEY: json.dumps(meta)})


def test_round_trip(tmp_path, encoder, good):
    path = save_rescorer(tmp_path / "r.safetensors", load_rescorer(good, encoder=encoder.spec))
    again = load_rescorer(path, encoder=encoder.spec)
    assert again.fusion == Fusion(0.5, -0.1) and again.pooling == "mean"
    assert again.lora.config.r == 2 and len(again.lora.targets) == 4
    assert is_rescorer_file(good) and not is_rescorer_file(b"not a file")
    first = load_rescorer(good)
    for module, tensors in first.lora.tensors.items():
        torch.testing.assert_close(tensors["lora_B"], again.lora.tensors[module]["lora_B"])
    torch.testing.assert_close(first.head_weight, again.head_weight)


def _nan_head(t):
    t["head.weight"][0] = float("nan")


def _drop_head(t):
    del t["head.bias"]


def _wide_head(t):
    t["head.weight"] = torch.zeros(7)


def _bad_lora(t):
    name = next(n for n in t if n.endswith("lora_A"))
    t[name] = torch.zeros(3, 5)


@pytest.mark.parametrize(("change", "message"), [
    ({"tensors": _nan_head}, "non-finite"),
    ({"tensors": _drop_head}, "lacks"),
    ({"tensors": _wide_head}, "hidden size"),
    ({"tensors": _bad_lora}, "shape"),
    ({"meta_update": {"kind": "bert-mlm"}}, "unknown rescorer kind"),
    ({"meta_update": {"format_version": 9}}, "format_version"),
    ({"meta_update": {"pooling": "max"}}, "pooling"),
    ({"meta_update": {"fusion": {"weight": float("inf"), "length_weight": 0}}}, "fusion"),
    ({"meta_update": {"lora": {"r": 2, "alpha": 4.0, "dropout": 0.1}}}, "unknown hyper-parameter"),
    ({"meta_update": {"encoder": {"name": "minilm", "fingerprint": "0" * 64}}}, "fingerprint"),
    ({"meta_drop": ["targets"]}, "missing required"),
])
def test_invalid_files_are_refused_with_the_reason(encoder, good, change, message):
    with pytest.raises(InvalidAdapter, match=message):
        load_rescorer(_rewrite(good, **change), encoder=encoder.spec)


def test_truncated_and_foreign_files(encoder, good):
    with pytest.raises(InvalidAdapter, match="past the end|outside|parse"):
        load_rescorer(good[: len(good) // 2], encoder=encoder.spec)
    plain = safetensors.torch.save({"x": torch.zeros(2)})
    with pytest.raises(InvalidAdapter, match="not a SplitASR rescorer"):
        load_rescorer(plain)


def test_text_only_lists(tmp_path, encoder):
    text = tmp_path / "domain.txt"
    text.write_text("# cardiology\nStart the heparin drip.\n\nthe troponin came back elevated\n")
    sentences = read_sentences(text)
    assert sentences == ["start the heparin drip", "the troponin came back elevated"]
    lists = synthesize_lists(sentences, encoder.tokenizer.get_vocab(), k=4)
    for x, sentence in zip(lists, sentences):
        right = x.hyps.index(sentence)
        assert x.errors[right] == 0 and len(set(x.hyps)) == len(x.hyps) >= 3
        assert all(e >= 1 for i, e in enumerate(x.errors) if i != right) and x.asr == [0.0] * len(x.hyps)
    assert any(x.hyps[0] != s for x, s in zip(synthesize_lists(sentences * 4, encoder.tokenizer.get_vocab()),
                                              sentences * 4))  # shuffled: the sentence is not always first
    confuser = Confuser(["hepatic", "heparin", "trope", "nin", "the"])
    assert confuser.split("tropenin") == "trope nin"
    assert "hepatic" in confuser.neighbours("heparin")
    assert sound_key("heparin") == sound_key("hepburn") == "h165" != sound_key("troponin")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(Exception, match="no sentences"):
        read_sentences(empty)


def test_deeply_nested_metadata_is_an_invalid_file(good):
    loaded = safetensors_from_bytes(good)
    nested = "[" * 100_000 + "]" * 100_000
    data = safetensors.torch.save(loaded, metadata={METADATA_KEY: nested})
    with pytest.raises(InvalidAdapter, match="rescorer metadata JSON is nested too deeply"):
        load_rescorer(data)
