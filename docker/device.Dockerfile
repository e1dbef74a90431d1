# syntax=docker/dockerfile:1
# The device client alone (`splitasr-device`): grpcio, protobuf and numpy; no torch, no transformers.
#   docker build -f docker/device.Dockerfile -t splitasr-device .
#   docker run --rm -e SPLITASR_DEVICE_SERVER=asr.example.com:50051 -e SPLITASR_DEVICE_TOKEN=... \
#       -v "$PWD:/data:ro" splitasr-device transcribe /data/talk.wav
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
# setuptools wants every listed package present to build the wheel; only the base (device)
# dependencies get installed below.
COPY server ./server
COPY device_client ./device_client
# hadolint ignore=DL3013
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
# the base install (no extras) is the device side: numpy, grpcio, protobuf
# hadolint ignore=DL3013
RUN pip install /wheels/*.whl && rm -rf /wheels \
 && useradd --create-home --uid 10001 --user-group device
USER 10001
WORKDIR /home/device
ENTRYPOINT ["splitasr-device"]
CMD ["--help"]
