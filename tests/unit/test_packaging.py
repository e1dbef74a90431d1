"""Every sub-package of the server and the device client is listed in pyproject.toml, so wheels
contain all of it."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.mark.parametrize("package, folder", [("splitasr", "server"), ("splitasr_device", "device_client")])
def test_every_package_is_listed(package, folder):
    assert CONFIG["tool"]["setuptools"]["package-dir"][package] == folder
    listed = set(CONFIG["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join((package, *p.parent.relative_to(ROOT / folder).parts))
        for p in (ROOT / folder).rglob("__init__.py")
    }
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages"


def test_base_install_is_the_light_device_side():
    base = " ".join(CONFIG["project"]["dependencies"])
    for heavy in ("torch", "transformers", "grpcio-tools", "fastapi"):
        assert heavy not in base
    assert "grpcio==" in base and "protobuf" in base
    assert CONFIG["project"]["scripts"]["splitasr-device"] == "splitasr_device.cli:main"
