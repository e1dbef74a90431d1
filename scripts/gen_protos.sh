#!/usr/bin/env bash
# Regenerate device_client/_proto/ from protos/ (needs grpcio-tools: pip install -e ".[server]").
set -euo pipefail
cd "$(dirname "$0")/.."
python scripts/gen_protos.py "$@"
