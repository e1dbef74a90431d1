"""The floors of docs/architecture.md hold: import-linter's contracts (pyproject.toml) are kept, and a
module that imports upwards is reported; ruff finds nothing (imports sorted with splitasr first-party)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
pytestmark = pytest.mark.skipif(LINT is None, reason="import-linter is part of the dev extra")


def _lint(config: Path | None = None, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    args = [LINT, "--no-cache"] + (["--config", str(config)] if config else [])
    return subprocess.run(args, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_every_contract_is_kept() -> None:
    result = _lint()
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "3 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_floors(tmp_path: Path) -> None:
    """The same contract on a two-floor copy of the layout: a lower module importing a higher one fails."""
    pkg = tmp_path / "house"
    for name, body in {"__init__.py": "", "low.py": "from house import high\n", "high.py": "X = 1\n"}.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(body)
    config = tmp_path / "contracts.toml"
    config.write_text(textwrap.dedent("""
        [tool.importlinter]
        root_packages = ["house"]

        [[tool.importlinter.contracts]]
        name = "floors"
        type = "layers"
        layers = ["house.high", "house.low"]
    """))
    result = _lint(config, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "house.low -> house.high" in result.stdout


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is part of the dev extra")
    result = subprocess.run([ruff, "check", "--no-cache", "server", "device_client", "tests"], check=False,
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]
