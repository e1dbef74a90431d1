#!/bin/sh
# Build-stage installer shared by both images: a venv at /opt/venv with this project, and for the
# server its pinned torch taken from TORCH_INDEX_URL alone.
#   install.sh server     torch==<pyproject pin> from TORCH_INDEX_URL (and nowhere else), then .[server]
#                         (.[server,$SPLITASR_EXTRAS] when that is set, e.g. SPLITASR_EXTRAS=scale)
#   install.sh device     the base (device) install only
# An unreachable TORCH_INDEX_URL fails here, at once, instead of letting pip fall back to PyPI's
# Linux torch wheel, a CUDA build that pulls several GB of NVIDIA packages into a "cpu" image.
set -eu
what="${1:?usage: install.sh server|device}"
if [ -s /tmp/build-ca/ca.crt ]; then  # a TLS-intercepting network: trust its CA in this stage only
    export PIP_CERT=/tmp/build-ca/ca.crt SSL_CERT_FILE=/tmp/build-ca/ca.crt
fi
python3 -m venv /opt/venv
pip=/opt/venv/bin/pip
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=60
"$pip" install --upgrade pip
if [ "$what" = server ]; then
    pin=$(/opt/venv/bin/python -c 'import re, tomllib; deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["server"]; print(next(d for d in deps if re.match(r"torch\s*==", d)).replace(" ", ""))')
    index="${TORCH_INDEX_URL%/}"
    if ! /opt/venv/bin/python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/", timeout=30)' "$index" 2>/tmp/probe.err; then
        echo "TORCH_INDEX_URL=$index cannot be reached from the build: $(tail -1 /tmp/probe.err)" >&2
        echo "Pass a reachable index (--build-arg TORCH_INDEX_URL=...); scripts/test-images.sh can serve a local CPU wheel." >&2
        exit 1
    fi
    "$pip" install --no-deps --index-url "$index/" "$pin"  # the torch index only: no PyPI fallback
    "$pip" install ".[server${SPLITASR_EXTRAS:+,$SPLITASR_EXTRAS}]"
else
    "$pip" install .
fi
"$pip" check
rm -rf /tmp/build-ca /tmp/probe.err
