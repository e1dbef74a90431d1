"""``splitasr train`` → ``eval --adapter`` → ``transcribe --adapter`` through the real CLI on tiny.en.

Trains a small LoRA adapter for a few steps on real speech (the real-speech fixtures; with espeak-ng
and sox installed, a synthesized speaker too) and checks that the commands run and print valid output.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from splitasr.datasets.manifest import load_manifest, write_manifest

REAL_SPEECH = Path(__file__).resolve().parents[1] / "data" / "real-speech" / "manifest.jsonl"


def splitasr(cache_root: Path, *args: str, timeout: float = 240) -> str:
    env = {**os.environ, "SPLITASR_CACHE_DIR": str(cache_root)}
    result = subprocess.run([sys.executable, "-m", "splitasr.cli", *args], env=env, capture_output=True, text=True,
                            timeout=timeout, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def trained(tiny_backbone, cache_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """(adapter file, test manifest, train report): LoRA r=4 on the decoder, 4 real utterances, 1 epoch."""
    folder = tmp_path_factory.mktemp("adapt")
    rows = load_manifest(REAL_SPEECH)
    train, dev, test = write_manifest(folder / "train.jsonl", rows[1:5]), write_manifest(
        folder / "dev.jsonl", rows[5:7]), write_manifest(folder / "test.jsonl", rows[7:9])
    out = folder / "user.safetensors"
    report = json.loads(splitasr(cache_root, "train", "--kind", "lora", "--rank", "4", "--manifest", str(train),
                                 "--dev-manifest", str(dev), "--out", str(out), "--epochs", "1", "--targets", "decoder",
                                 "--batch-size", "4", "--threads", "2", "--json"))
    return out, test, report


def test_train_writes_an_adapter_and_reports(trained) -> None:
    out, _, report = trained
    assert out.is_file() and report["file_bytes"] == out.stat().st_size
    assert report["kind"] == "lora" and report["stage"] == "train" and report["steps"] == 1
    assert report["trainable_parameters"] == report["adapter_parameters"] == 4 * 39936  # decoder: 39936 per rank
    assert report["dev_metric"] == "wer" and 0 <= report["dev_after"] <= report["dev_before"]
    assert report["encoder_layers_cached"] == 4  # decoder-only targets: the encoder ran once per utterance


def test_eval_with_adapter_prints_json(trained, cache_root: Path) -> None:
    out, test, _ = trained
    report = json.loads(splitasr(cache_root, "eval", "--manifest", str(test), "--adapter", str(out), "--json"))
    assert report["utterances"] == 2 and 0 <= report["wer"] <= 1
    assert report["adapter"]["kind"] == "lora" and report["adapter"]["file_bytes"] == out.stat().st_size


def test_transcribe_with_adapter_prints_text(trained, cache_root: Path) -> None:
    out, test, _ = trained
    audio = load_manifest(test)[0].audio_path
    text = splitasr(cache_root, "transcribe", str(audio), "--adapter", str(out))
    assert text.strip() and not text.lstrip().startswith("{")


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("sox")), reason="needs espeak-ng and sox")
def test_adapter_lowers_wer_on_a_synthetic_speaker(tiny_backbone, cache_root: Path, tmp_path: Path) -> None:
    """A real adaptation: 40 sentences of one synthetic speaker, then held-out sentences."""
    splitasr(cache_root, "synth", "--out", str(tmp_path), "--speaker", "cardio_nurse", "--train", "40",
             "--dev", "10", "--test", "35", timeout=600)
    speaker = tmp_path / "cardio_nurse"
    out = tmp_path / "nurse.safetensors"
    splitasr(cache_root, "train", "--manifest", str(speaker / "train.jsonl"), "--dev-manifest",
             str(speaker / "dev.jsonl"), "--out", str(out), "--epochs", "6", "--json", timeout=1800)
    base = json.loads(splitasr(cache_root, "eval", "--manifest", str(speaker / "test.jsonl"), "--json", timeout=900))
    adapted = json.loads(splitasr(cache_root, "eval", "--manifest", str(speaker / "test.jsonl"), "--adapter", str(out),
                                  "--json", timeout=900))
    assert adapted["wer"] < 0.8 * base["wer"], (base["wer"], adapted["wer"])
