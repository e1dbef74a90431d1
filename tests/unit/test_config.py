"""Bad settings stop ``splitasr`` at start with exit code 2 and a message naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError, model_validator

from splitasr.cli import main
from splitasr.config import Settings, describe_invalid_settings


def test_serve_with_an_out_of_range_port_fails_fast_naming_the_setting(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPLITASR_")}
    result = subprocess.run([sys.executable, "-m", "splitasr.cli", "serve"], check=False, cwd=tmp_path,
                            env={**env, "SPLITASR_PORT": "99999"}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "invalid setting SPLITASR_PORT: Input should be less than or equal to 65535" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_problem_is_named_and_values_are_not_echoed(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPLITASR_LOG_FORMAT", "xml")
    monkeypatch.setenv("SPLITASR_SHUTDOWN_GRACE_SECONDS", "-1")
    monkeypatch.setenv("SPLITASR_MAX_BATCH_ROWS", "many-secret-value")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "invalid setting SPLITASR_LOG_FORMAT: Input should be 'auto', 'json' or 'text'" in err
    assert "invalid setting SPLITASR_SHUTDOWN_GRACE_SECONDS: Input should be greater than or equal to 0" in err
    assert "invalid setting SPLITASR_MAX_BATCH_ROWS" in err and "many-secret-value" not in err


def test_empty_variables_mean_the_default(monkeypatch):
    monkeypatch.setenv("SPLITASR_PORT", "")
    monkeypatch.setenv("SPLITASR_STORE_DIR", "")
    settings = Settings(_env_file=None)
    assert settings.port == 8000 and settings.store_dir is None


def test_model_level_problems_are_reported_too():
    class Strict(Settings):
        @model_validator(mode="after")
        def _pair(self) -> Strict:
            raise ValueError("set both A and B")

    with pytest.raises(ValidationError) as info:
        Strict(_env_file=None)
    assert "set both A and B" in describe_invalid_settings(info.value)


def test_a_misspelled_setting_is_named_with_the_closest_real_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPLITASR_")}
    env.update(SPLITASR_MAX_QUEUE_REQUESTS="5", SPLITASR_NOT_A_THING="1",
               SPLITASR_HOST="0.0.0.0",  # refused right after the warnings: the test needs no model
               SPLITASR_LOG_FORMAT="json")
    result = subprocess.run([sys.executable, "-m", "splitasr.cli", "serve"], check=False, cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert ("SPLITASR_MAX_QUEUE_REQUESTS is not a setting and is ignored; did you mean "
            "SPLITASR_MAX_QUEUED_REQUESTS?") in result.stderr
    assert "SPLITASR_NOT_A_THING is not a setting and is ignored\"" in result.stderr  # (json log lines)
