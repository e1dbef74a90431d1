"""The device side installs without the server extra and works end to end with no torch present.

A fresh virtual environment gets the project with ``--no-deps`` plus only its base dependencies
(grpcio, protobuf, grpcio-health-checking, numpy): no torch, no transformers. Its ``splitasr-device``
then enrolls, transcribes and streams against the real server on loopback, and ``splitasr serve``
says which extra to install instead of failing with a traceback.
"""

from __future__ import annotations

import json
import subprocess
import venv
from pathlib import Path

import pytest

from splitasr.audio import decode_audio, encode_wav_pcm16
from tests.adapter_factory import adapter_bytes

from .grpc_server import TOKENS

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _pip(python: Path, *args: str) -> None:
    done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", *args], check=False,
                          capture_output=True, text=True)
    if done.returncode != 0:
        if "No matching distribution" in done.stderr or "Could not find" in done.stderr:
            pytest.skip(f"packages not reachable from here: {done.stderr.strip()[-300:]}")
        raise AssertionError(done.stderr)


@pytest.fixture(scope="module")
def device_venv(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("device-venv")
    venv.EnvBuilder(with_pip=True).create(folder)
    python = folder / "bin" / "python"
    _pip(python, "grpcio==1.85.1", "protobuf==7.36.2", "grpcio-health-checking==1.85.1", "numpy")
    _pip(python, "--no-deps", str(ROOT))
    return folder


def test_the_device_install_has_no_heavy_packages(device_venv):
    python = device_venv / "bin" / "python"
    code = ("import importlib.util, sys, splitasr_device.cli; "
            "print(json.dumps([m for m in ('torch', 'transformers', 'pydantic', 'fastapi') "
            "if importlib.util.find_spec(m)]))")
    out = subprocess.run([str(python), "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_device_cli_end_to_end_without_torch(device_venv, grpc_server, tmp_path, real_speech):
    wav = tmp_path / "goforward.wav"
    wav.write_bytes(encode_wav_pcm16(decode_audio(real_speech[-1]["path"])))
    adapter = tmp_path / "venv.safetensors"
    adapter.write_bytes(adapter_bytes(grpc_server.engine.spec, "lora", seed=31, std=0.005))
    cli = [str(device_venv / "bin" / "splitasr-device"), "--server", grpc_server.address, "--adapter", str(adapter),
           "--json"]
    env = {"SPLITASR_DEVICE_TOKEN": TOKENS["bob"], "PATH": "/usr/bin:/bin"}

    def run(*args: str) -> str:
        done = subprocess.run([*cli, *args], check=False, capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert json.loads(run("enroll"))["uploaded_bytes"] == adapter.stat().st_size
    assert json.loads(run("enroll"))["uploaded_bytes"] == 0
    assert json.loads(run("status"))["enrolled_as"]["name"] == "venv"
    assert "forward" in json.loads(run("transcribe", str(wav)))["text"].lower()
    updates = [json.loads(line) for line in run("stream", str(wav)).splitlines()]
    assert updates[-1]["is_final"] and "forward" in updates[-1]["text"].lower()


def test_server_commands_on_a_device_install_say_what_to_install(device_venv):
    done = subprocess.run([str(device_venv / "bin" / "splitasr"), "serve"], capture_output=True, text=True,
                          check=False, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 1
    assert "pip install 'splitasr[server]'" in done.stderr and "Traceback" not in done.stderr
    version = subprocess.run([str(device_venv / "bin" / "splitasr-device"), "--version"], capture_output=True,
                             text=True, check=True)
    assert version.stdout.startswith("splitasr-device ")


def test_device_cli_trains_its_adapter_without_torch(device_venv, jobs_server, speaker, tmp_path):
    """Enrollment from recordings on the base install: the server trains, the file comes back, enroll works."""
    out = tmp_path / "trained.safetensors"
    cli = [str(device_venv / "bin" / "splitasr-device"), "--server", jobs_server.grpc_address, "--adapter", str(out)]
    env = {"SPLITASR_DEVICE_TOKEN": TOKENS["bob"], "PATH": "/usr/bin:/bin"}
    done = subprocess.run([*cli, "train", "--manifest", str(speaker.train), "--epochs", "1", "--dev", "0"],
                          check=False, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "wrote " + str(out) in done.stdout
    progress = done.stderr.splitlines()  # not a terminal: one line per stage, epoch and status, no bar
    assert any(line.startswith("uploading:") for line in progress)
    assert any("epoch 1/1" in line for line in progress) and progress[-1].startswith("succeeded:")
    enrolled = subprocess.run([*cli, "--json", "enroll", "--name", "bob-trained"], check=False, capture_output=True,
                              text=True, env=env, timeout=120)
    assert enrolled.returncode == 0, enrolled.stderr
    assert json.loads(enrolled.stdout)["uploaded_bytes"] == out.stat().st_size


def test_device_opus_needs_only_the_opus_extra(device_venv, grpc_server, tmp_path, real_speech):
    """--codec opus on the base install says which extra to install; with it (soundfile's wheel, no
    system library) the same command streams Ogg Opus. Last in the module: it adds the extra."""
    wav = tmp_path / "goforward.wav"
    wav.write_bytes(encode_wav_pcm16(decode_audio(real_speech[-1]["path"])))
    cli = [str(device_venv / "bin" / "splitasr-device"), "--server", grpc_server.address, "--json", "stream",
           str(wav), "--codec", "opus", "--no-interim"]
    env = {"SPLITASR_DEVICE_TOKEN": TOKENS["bob"], "PATH": "/usr/bin:/bin"}
    before = subprocess.run(cli, check=False, capture_output=True, text=True, env=env, timeout=120)
    assert before.returncode == 1
    assert 'pip install "splitasr[opus]"' in before.stderr and "Traceback" not in before.stderr
    requirement = next(r for r in (ROOT / "pyproject.toml").read_text().splitlines() if '"soundfile==' in r)
    _pip(device_venv / "bin" / "python", requirement.strip().strip('",'))
    after = subprocess.run(cli, check=False, capture_output=True, text=True, env=env, timeout=120)
    assert after.returncode == 0, after.stderr
    assert "forward" in json.loads(after.stdout.splitlines()[-1])["text"].lower()
