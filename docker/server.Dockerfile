# The SplitASR server (REST :8000, gRPC :50051). One file, two variants (build argument VARIANT):
#   gpu (default)  NVIDIA CUDA runtime base + CUDA PyTorch; the host needs the NVIDIA Container Toolkit
#   cpu            Debian python:slim base + PyTorch's CPU wheels (far smaller, runs anywhere)
#
#   docker build -f docker/server.Dockerfile -t splitasr-server:gpu .
#   docker build -f docker/server.Dockerfile --build-arg VARIANT=cpu -t splitasr-server:cpu .
#   podman build --format docker ...        (podman's default OCI format drops HEALTHCHECK)
# Without a registry (or behind a TLS-intercepting proxy) use scripts/test-images.sh: it passes a
# local base image as PYTHON_IMAGE (and CUDA_IMAGE, which docker's classic builder builds even for
# cpu), a CA bundle and a reachable TORCH_INDEX_URL. No `# syntax=` line: it would make BuildKit
# contact a registry for its frontend.
ARG VARIANT=gpu
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${CUDA_IMAGE} AS base-gpu
# PyTorch's CUDA wheels carry their own CUDA libraries; the CUDA base image brings the driver
# integration the NVIDIA Container Toolkit expects.
ENV SPLITASR_TORCH_DEFAULT_INDEX=https://download.pytorch.org/whl/cu128 \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
# python3 only when the base lacks it (the CUDA image does; a local Debian base standing in for it
# when the classic builder builds this unused stage does not), so that stage costs nothing there
# hadolint ignore=DL3008
RUN if ! python3 -c "import venv, ensurepip" 2>/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
      && rm -rf /var/lib/apt/lists/*; fi

FROM ${PYTHON_IMAGE} AS base-cpu
ENV SPLITASR_TORCH_DEFAULT_INDEX=https://download.pytorch.org/whl/cpu

# hadolint ignore=DL3006
FROM base-${VARIANT} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY device_client ./device_client
# optional CA bundle for the build only (docker/build-ca/README.md); the final stage never sees it
COPY docker/build-ca/ /tmp/build-ca/
COPY docker/install.sh /usr/local/bin/splitasr-install
# torch (the pyproject pin) from TORCH_INDEX_URL alone (default: PyTorch's index for the variant),
# failing fast if it is unreachable; then .[server]. (An ARG read by RUN, not an ENV, so that a
# changed URL never reuses a cached layer.)
ARG TORCH_INDEX_URL=""
# extras beyond `server` (comma-separated): `scale` adds Ray Serve for `serve --replicas` and KubeRay
# (deploy/kuberay/), `s3` boto3 for an adapter store in S3 (SPLITASR_ADAPTER_STORE_URL)
ARG EXTRAS=""
RUN TORCH_INDEX_URL="${TORCH_INDEX_URL:-$SPLITASR_TORCH_DEFAULT_INDEX}" SPLITASR_EXTRAS="${EXTRAS}" \
    sh /usr/local/bin/splitasr-install server

# hadolint ignore=DL3006
FROM base-${VARIANT} AS server
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 HF_HUB_DISABLE_PROGRESS_BARS=1 \
    SPLITASR_HOST=0.0.0.0 SPLITASR_PORT=8000 SPLITASR_GRPC_PORT=50051 \
    SPLITASR_CACHE_DIR=/var/cache/splitasr SPLITASR_STORE_DIR=/var/lib/splitasr/adapters \
    SPLITASR_LOG_FORMAT=json
# uid 10001: the CUDA (Ubuntu) base already has a uid 1000 user; device.Dockerfile uses 10001 too
RUN useradd --create-home --uid 10001 --user-group splitasr \
 && mkdir -p /var/cache/splitasr /var/lib/splitasr/adapters /var/lib/splitasr/demo \
 && chown -R splitasr:splitasr /var/cache/splitasr /var/lib/splitasr
COPY --from=build /opt/venv /opt/venv
USER 10001
WORKDIR /home/splitasr
# backbone conversions/caches, and the tenants' adapters: keep both across container upgrades
VOLUME ["/var/cache/splitasr", "/var/lib/splitasr/adapters"]
EXPOSE 8000 50051
# Ready = backbone loaded and warmed up (/readyz); a big backbone's first conversion takes minutes.
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('SPLITASR_PORT', '8000'), timeout=4)"]
# SIGTERM: finish requests and streams in progress (SPLITASR_SHUTDOWN_GRACE_SECONDS), then exit 0
STOPSIGNAL SIGTERM
CMD ["splitasr", "serve"]
