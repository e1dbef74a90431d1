# SplitASR server. CPU image by default; for NVIDIA GPUs build with
#   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    SPLITASR_HOST=0.0.0.0 SPLITASR_PORT=8000 SPLITASR_CACHE_DIR=/var/cache/splitasr

RUN useradd --create-home --uid 1000 splitasr
WORKDIR /app
COPY pyproject.toml README.md ./
COPY server ./server
RUN pip install --extra-index-url "$TORCH_INDEX" ".[server]"
RUN mkdir -p /var/cache/splitasr && chown splitasr /var/cache/splitasr
USER splitasr
VOLUME ["/var/cache/splitasr"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz').status != 200)"
CMD ["splitasr", "serve"]
