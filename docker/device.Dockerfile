# The device client alone (`splitasr-device`): grpcio, protobuf and numpy; no torch, no transformers.
#   docker build -f docker/device.Dockerfile -t splitasr-device .
#   docker run --rm -e SPLITASR_DEVICE_SERVER=asr.example.com:50051 -e SPLITASR_DEVICE_TOKEN=... \
#       -v "$PWD:/data:ro" splitasr-device transcribe /data/talk.wav
# (No `# syntax=` line: BuildKit would contact a registry for it. scripts/test-images.sh builds this
# from a local base image.)
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
# setuptools wants every listed package present to build the wheel; only the base (device)
# dependencies get installed.
COPY server ./server
COPY device_client ./device_client
COPY docker/build-ca/ /tmp/build-ca/
COPY docker/install.sh /usr/local/bin/splitasr-install
RUN sh /usr/local/bin/splitasr-install device

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
RUN useradd --create-home --uid 10001 --user-group device
COPY --from=build /opt/venv /opt/venv
USER 10001
WORKDIR /home/device
ENTRYPOINT ["splitasr-device"]
CMD ["--help"]
