#!/usr/bin/env bash
# Make a minimal Debian base image with Python from Debian's archive (mmdebstrap), with no container
# registry involved, and import it into podman or docker. scripts/test-images.sh builds the SplitASR
# images on it (as PYTHON_IMAGE, and CUDA_IMAGE for docker's classic builder).
#
#   bash scripts/make-base-image.sh [--engine podman|docker] [--suite bookworm] [--mirror URL]
#                                   [--tag localhost/splitasr-base:bookworm]
#
# Needs root (or a working unshare mode) for mmdebstrap: apt-get install mmdebstrap podman (or docker.io).
# The image holds python3, python3-venv, python3-pip and ca-certificates; pip may install into the
# system Python there (EXTERNALLY-MANAGED is removed) as it does in the python:slim images.
set -euo pipefail

engine="" suite=bookworm mirror="" tag=localhost/splitasr-base:bookworm
while [ $# -gt 0 ]; do
    case "$1" in
        --engine) engine="$2"; shift 2 ;;
        --suite) suite="$2"; shift 2 ;;
        --mirror) mirror="$2"; shift 2 ;;
        --tag) tag="$2"; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "make-base-image.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
if [ -z "$engine" ]; then
    if command -v podman >/dev/null; then engine=podman
    elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then engine=docker
    else echo "make-base-image.sh: neither podman nor a running docker found" >&2; exit 2; fi
fi
command -v mmdebstrap >/dev/null || { echo "make-base-image.sh: mmdebstrap is not installed (apt-get install mmdebstrap)" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$SECONDS
# no mirror: mmdebstrap uses this host's apt sources for that suite
mmdebstrap --variant=apt --include=python3,python3-venv,python3-pip,ca-certificates \
    --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    "$suite" "$work/rootfs.tar" ${mirror:+"$mirror"}
"$engine" import --change 'CMD ["/bin/bash"]' "$work/rootfs.tar" "$tag" >/dev/null
echo "made $tag with $engine in $((SECONDS - start)) s ($(du -m "$work/rootfs.tar" | cut -f1) MB)"
