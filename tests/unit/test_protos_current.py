"""The committed gRPC code in device_client/_proto/ is what protos/ generates (never hand-edited)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "device_client" / "_proto"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_current(tmp_path):
    fresh = {p.name: p.read_text() for p in _generator().generate(tmp_path)}
    committed = {p.name: p.read_text() for p in COMMITTED.iterdir() if p.is_file() and p.suffix in (".py", ".pyi")}
    assert fresh.keys() == committed.keys(), "run scripts/gen_protos.sh"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"device_client/_proto/ is out of date ({', '.join(stale)}): run scripts/gen_protos.sh"


def test_generated_modules_never_import_the_server_package():
    for path in COMMITTED.glob("*.py"):
        assert "from splitasr." not in path.read_text() and "import splitasr." not in path.read_text(), path
