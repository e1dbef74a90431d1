"""Both command lines: --version, help without markup, exit codes 2 (usage) and 1 (failure)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from splitasr import __version__
from splitasr.cli import build_parser
from splitasr.cli import main as splitasr_main
from splitasr_device.cli import build_parser as device_parser
from splitasr_device.cli import main as device_main


def _run(module: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPLITASR_")}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, check=False,
                          timeout=120, env={**env, **kwargs.pop("env", {})}, **kwargs)


def test_both_commands_print_their_version():
    out = _run("splitasr.cli", "--version")
    assert out.returncode == 0 and out.stdout.strip() == f"splitasr {__version__}"
    out = _run("splitasr_device.cli", "--version")
    assert out.returncode == 0 and out.stdout.strip() == f"splitasr-device {__version__}"


def _every_parser(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:  # argparse keeps sub-parsers only here
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _every_parser(child)


@pytest.mark.parametrize("build", [build_parser, device_parser])
def test_help_texts_have_no_restructuredtext_markup(build):
    parsers = list(_every_parser(build()))
    assert len(parsers) >= 7
    for parser in parsers:
        text = parser.format_help()
        assert "`" not in text, f"{parser.prog}:\n{text}"
        assert ":class:" not in text and ":func:" not in text


def test_usage_errors_exit_2_and_failures_exit_1(tmp_path, capsys):
    assert _run("splitasr.cli", "transcribe").returncode == 2  # argparse: a required argument is missing
    assert splitasr_main(["synth"]) == 2
    assert "--out DIR is required" in capsys.readouterr().err
    assert splitasr_main(["bench", "quant", "--manifest", "no-equals-sign"]) == 2
    assert "takes NAME=PATH" in capsys.readouterr().err
    assert splitasr_main(["adapter", "inspect", str(tmp_path / "missing.safetensors")]) == 1
    err = capsys.readouterr().err
    assert "missing.safetensors" in err and "Traceback" not in err
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not an adapter" * 10)
    assert splitasr_main(["adapter", "inspect", str(junk)]) == 1
    assert "adapter" in capsys.readouterr().err


def test_device_usage_errors_exit_2_and_failures_exit_1(tmp_path, capsys):
    assert device_main(["--server", "127.0.0.1:1", "stream"]) == 2
    assert "needs a FILE or --mic" in capsys.readouterr().err
    assert device_main(["--config", str(tmp_path / "none.ini"), "status"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert device_main(["--server", "127.0.0.1:1", "transcribe", str(tmp_path / "missing.wav")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_serve_without_the_server_packages_says_what_to_install(tmp_path):
    """A device-only install has the splitasr command but not torch, pydantic-settings, fastapi ..."""
    code = ("import sys; sys.modules['pydantic_settings'] = None; sys.modules['torch'] = None; "
            "from splitasr.cli import main; sys.exit(main(['serve']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120,
                         cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    assert "pip install 'splitasr[server]'" in out.stderr and "Traceback" not in out.stderr
