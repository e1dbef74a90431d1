"""Generate the Python gRPC code for ``protos/splitasr/v1/*.proto`` into ``device_client/_proto/``.

The .proto files are the single source of truth; the output is committed and
``tests/unit/test_protos_current.py`` fails when it differs from a fresh run of this script.
protoc names modules after the proto path (``splitasr/v1/x_pb2``), which would collide with the
server's import package ``splitasr``; so the modules are written flat and their cross-imports made
relative (``from . import x_pb2``). Needs grpcio-tools (the ``server`` or ``dev`` extra).

Usage: python scripts/gen_protos.py [OUT_DIR]
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "protos"
PROTO_PACKAGE = "splitasr/v1"
DEFAULT_OUT = ROOT / "device_client" / "_proto"
INIT = '"""Generated from protos/ by scripts/gen_protos.py; do not edit."""\n'
_ABSOLUTE_IMPORT = re.compile(r"^from splitasr\.v1 import (\w+)", re.MULTILINE)


def generate(out_dir: Path) -> list[Path]:
    """Write the generated modules into ``out_dir``; returns the files written."""
    from grpc_tools import protoc

    protos = sorted((PROTO_ROOT / PROTO_PACKAGE).glob("*.proto"))
    well_known = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto, shipped with grpcio-tools
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", f"--python_out={tmp}", f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}", *(str(p.relative_to(PROTO_ROOT)) for p in protos)]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = [out_dir / "__init__.py"]
        written[0].write_text(INIT)
        for source in sorted((Path(tmp) / PROTO_PACKAGE).iterdir()):
            text = _ABSOLUTE_IMPORT.sub(r"from . import \1", source.read_text())
            target = out_dir / source.name
            target.write_text(text)
            written.append(target)
    return written


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    for path in generate(out):
        print(path.relative_to(out.parent) if out == DEFAULT_OUT else path)
