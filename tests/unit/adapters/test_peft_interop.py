"""PEFT LoRA import/export: identical outputs to peft itself, and unsafe archives rejected."""

from __future__ import annotations

import copy
import json
import zipfile
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from splitasr.adapters import (
    Adapter,
    AdapterLimits,
    BackboneSpec,
    attach_bank,
    bank_context,
    export_peft,
    import_peft,
    load_into_slot,
)
from splitasr.errors import InvalidAdapter
from tests.adapter_factory import LIMITS, make_case
from tests.files import zip_bytes

# peft and transformers warn about their own internals (is_gradient_checkpointing).
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

DECODER_IDS = torch.tensor([[1, 5, 9, 17]] * 2)


def _logits(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_features=features, decoder_input_ids=DECODER_IDS).logits


def _ours(model: nn.Module, adapter: Adapter, features: torch.Tensor) -> torch.Tensor:
    attach_bank(model, adapter.targets, num_slots=1, limits=LIMITS, kinds=["lora"])
    load_into_slot(model, 1, adapter)
    with bank_context(model, slots=[1, 1]):
        return _logits(model, features)


@pytest.fixture
def peft_dir(base_model: nn.Module, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Path, nn.Module]:
    """A saved PEFT LoRA (random, non-zero B) on the tiny backbone, and the live PeftModel."""
    rslora = getattr(request, "param", False)
    torch.manual_seed(11)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "fc1"], init_lora_weights=False,
                        use_rslora=rslora)
    peft_model = get_peft_model(copy.deepcopy(base_model), config).eval()
    peft_model.save_pretrained(tmp_path / "peft")
    return tmp_path / "peft", peft_model


@pytest.mark.parametrize("peft_dir", [False, True], ids=["lora", "rslora"], indirect=True)
def test_import_folder_matches_peft(peft_dir: tuple[Path, nn.Module], model: nn.Module, spec: BackboneSpec,
                                    features: torch.Tensor) -> None:
    folder, peft_model = peft_dir
    adapter = import_peft(folder, spec)
    assert adapter.kind == "lora" and adapter.config.r == 4
    assert len(adapter.targets) == 2 * 2 * 2 + 2 * 2 + 2 * 2  # self q,v + cross q,v + fc1
    feats = features[:2]
    torch.testing.assert_close(_ours(model, adapter, feats), _logits(peft_model, feats), atol=1e-5, rtol=1e-5)


def _folder_files(folder: Path) -> dict[str, bytes]:
    return {n: (folder / n).read_bytes() for n in ("adapter_config.json", "adapter_model.safetensors")}


def test_import_zip_bytes_and_path(peft_dir: tuple[Path, nn.Module], spec: BackboneSpec, tmp_path: Path) -> None:
    folder, _ = peft_dir
    reference = import_peft(folder, spec)
    nested = zip_bytes({f"my-adapter/{n}": d for n, d in _folder_files(folder).items()})
    (tmp_path / "a.zip").write_bytes(nested)
    for source in (zip_bytes(_folder_files(folder)), tmp_path / "a.zip"):
        adapter = import_peft(source, spec)
        assert adapter.targets == reference.targets
        for module, group in reference.tensors.items():
            assert all(torch.equal(adapter.tensors[module][s], t) for s, t in group.items())


def test_export_loads_in_peft_with_same_outputs(base_model: nn.Module, model: nn.Module, spec: BackboneSpec,
                                                features: torch.Tensor, tmp_path: Path) -> None:
    adapter = make_case("lora", spec, seed=21)
    out = export_peft(adapter, tmp_path / "exported")
    peft_model = PeftModel.from_pretrained(copy.deepcopy(base_model), out).eval()
    feats = features[:2]
    ours = _ours(model, adapter, feats)
    torch.testing.assert_close(_logits(peft_model, feats), ours, atol=1e-5, rtol=1e-5)
    assert (ours - _logits(base_model, feats)).abs().max() > 1e-3
    round_trip = import_peft(out, spec)
    assert round_trip.targets == adapter.targets and round_trip.config == adapter.config


def test_export_refuses_other_kinds(adapters: dict[str, Adapter], tmp_path: Path) -> None:
    with pytest.raises(InvalidAdapter, match="only plain lora adapters"):
        export_peft(adapters["glora-lowrank"], tmp_path / "x")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"use_dora": True}, "use_dora=True"),
        ({"rank_pattern": {"q_proj": 8}}, "rank_pattern="),
        ({"bias": "all"}, "bias='all'"),
        ({"modules_to_save": ["proj_out"]}, "modules_to_save="),
        ({"init_lora_weights": "pissa"}, "rewrites the base weights"),
        ({"peft_type": "IA3"}, "only PEFT LoRA adapters"),
        ({"r": 0}, "'r' must be an integer >= 1"),
    ],
)
def test_unsupported_peft_features(peft_dir: tuple[Path, nn.Module], spec: BackboneSpec, change: dict,
                                   message: str) -> None:
    files = _folder_files(peft_dir[0])
    config = json.loads(files["adapter_config.json"]) | change
    files["adapter_config.json"] = json.dumps(config).encode()
    with pytest.raises(InvalidAdapter, match=message):
        import_peft(zip_bytes(files), spec)


def test_bad_tensor_names_and_ranks(peft_dir: tuple[Path, nn.Module], spec: BackboneSpec) -> None:
    from safetensors.torch import load, save

    files = _folder_files(peft_dir[0])
    tensors = load(files["adapter_model.safetensors"])
    tensors["base_model.model.model.decoder.embed_tokens.lora_embedding_A"] = torch.zeros(4, 100)
    with pytest.raises(InvalidAdapter, match="unsupported PEFT tensor .*lora_embedding_A"):
        import_peft(zip_bytes({**files, "adapter_model.safetensors": save(tensors)}), spec)
    with pytest.raises(InvalidAdapter, match="rank 4 exceeds the limit 2"):
        import_peft(zip_bytes(files), spec, limits=AdapterLimits(max_rank=2))


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"../adapter_config.json": b"{}", "adapter_model.safetensors": b"x"}, "unsafe path"),
        ({"/etc/adapter_config.json": b"{}"}, "unsafe path"),
        ({"a\\..\\adapter_config.json": b"{}"}, "unsafe path"),
        ({"adapter_config.json": b"{}"}, "exactly one 'adapter_model.safetensors'"),
        ({"adapter_config.json": b"{}", "adapter_model.safetensors": bytes(8 << 20)}, "zip bomb"),
    ],
    ids=["dotdot", "absolute", "backslash", "missing-weights", "bomb"],
)
def test_unsafe_zips_rejected(members: dict[str, bytes], message: str, spec: BackboneSpec) -> None:
    with pytest.raises(InvalidAdapter, match=message):
        import_peft(zip_bytes(members), spec)


def test_zip_total_size_and_member_count_limits(spec: BackboneSpec) -> None:
    limits = AdapterLimits(max_file_bytes=1000, max_zip_members=3)
    stored = zip_bytes({"adapter_config.json": b"{}", "adapter_model.safetensors": bytes(5000)}, compression=zipfile.ZIP_STORED)
    with pytest.raises(InvalidAdapter, match="over the limit"):
        import_peft(stored, spec, limits=AdapterLimits(max_file_bytes=1000))
    many = zip_bytes({f"f{i}": b"" for i in range(4)})
    with pytest.raises(InvalidAdapter, match="4 members, over the limit of 3"):
        import_peft(many, spec, limits=limits)
    with pytest.raises(InvalidAdapter, match="not a valid PEFT folder or zip"):
        import_peft(b"definitely not a zip", spec)
