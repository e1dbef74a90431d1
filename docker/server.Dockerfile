# syntax=docker/dockerfile:1
# The SplitASR server (REST :8000, gRPC :50051). One file, two variants (build argument VARIANT):
#   gpu (default)  NVIDIA CUDA runtime base + CUDA PyTorch; the host needs the NVIDIA Container Toolkit
#   cpu            Debian python:slim base + PyTorch's CPU wheels (far smaller, runs anywhere)
#
#   docker build -f docker/server.Dockerfile -t splitasr-server:gpu .
#   docker build -f docker/server.Dockerfile --build-arg VARIANT=cpu -t splitasr-server:cpu .
ARG VARIANT=gpu
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${CUDA_IMAGE} AS base-gpu
# PyTorch's CUDA wheels carry their own CUDA libraries; the CUDA base image brings the driver
# integration the NVIDIA Container Toolkit expects.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ENV TORCH_INDEX_URL=${TORCH_INDEX_URL} \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

FROM ${PYTHON_IMAGE} AS base-cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV TORCH_INDEX_URL=${TORCH_INDEX_URL}
RUN python -m venv /opt/venv

# hadolint ignore=DL3006
FROM base-${VARIANT} AS server
ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    HF_HUB_DISABLE_PROGRESS_BARS=1 \
    SPLITASR_HOST=0.0.0.0 SPLITASR_PORT=8000 SPLITASR_GRPC_PORT=50051 \
    SPLITASR_CACHE_DIR=/var/cache/splitasr SPLITASR_STORE_DIR=/var/lib/splitasr/adapters \
    SPLITASR_LOG_FORMAT=json
# uid 10001: the CUDA (Ubuntu) base already has a uid 1000 user; device.Dockerfile uses 10001 too
RUN useradd --create-home --uid 10001 --user-group splitasr \
 && mkdir -p /var/cache/splitasr /var/lib/splitasr/adapters /var/lib/splitasr/demo \
 && chown -R splitasr:splitasr /var/cache/splitasr /var/lib/splitasr
WORKDIR /app
COPY pyproject.toml README.md ./
COPY server ./server
COPY device_client ./device_client
# The project pins torch and every server dependency in pyproject.toml; the extra index picks the
# CUDA or CPU build of that pinned version.
# hadolint ignore=DL3013
RUN pip install --extra-index-url "$TORCH_INDEX_URL" ".[server]"
USER 10001
# backbone conversions/caches, and the tenants' adapters: keep both across container upgrades
VOLUME ["/var/cache/splitasr", "/var/lib/splitasr/adapters"]
EXPOSE 8000 50051
# Ready = backbone loaded and warmed up (/readyz); a big backbone's first conversion takes minutes.
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('SPLITASR_PORT', '8000'), timeout=4)"]
# SIGTERM: finish requests and streams in progress (SPLITASR_SHUTDOWN_GRACE_SECONDS), then exit 0
STOPSIGNAL SIGTERM
CMD ["splitasr", "serve"]
