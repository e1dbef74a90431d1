#!/usr/bin/env bash
# Build both images (server cpu variant, device) and smoke-test them with podman or docker:
# the server turns ready (and its HEALTHCHECK passes), a REST transcription of a real-speech file,
# the device image enrolls an adapter and transcribes over gRPC, and the server stops cleanly
# (exit 0 on SIGTERM). Prints one JSON object: build times, image sizes, each step's result.
#
#   bash scripts/test-images.sh [options]
#     --engine podman|docker      default: podman if installed, else a running docker
#     --builder default|classic|buildkit   docker only (classic = DOCKER_BUILDKIT=0)
#     --base-image IMAGE          PYTHON_IMAGE of both images (default python:3.11-slim-bookworm);
#                                 with --make-base, made by scripts/make-base-image.sh if missing
#     --cuda-image IMAGE          CUDA_IMAGE (default: the base image, so no builder fetches CUDA)
#     --make-base                 make --base-image (default localhost/splitasr-base:bookworm) if absent
#     --ca-bundle FILE            CA bundle pip trusts in the build stages (default: $PIP_CERT, else
#                                 the host's /etc/ssl/certs/ca-certificates.crt); "none" for none
#     --torch-index-url URL       index with the CPU torch wheel (default: PyTorch's CPU index if this
#                                 host reaches it, else a local index, see --torch-wheel)
#     --torch-wheel FILE          serve this CPU torch wheel from a local index on 127.0.0.1
#                                 (default when PyTorch's index is unreachable: the wheel this host's
#                                 pip resolves for the pinned version, if it is a +cpu build)
#     --tag-prefix PREFIX         image names PREFIX-server:cpu, PREFIX-device (default splitasr)
#     --report FILE               also write the JSON there
#     --keep                      keep the containers' volumes (images are always kept)
set -euo pipefail
cd "$(dirname "$0")/.."

engine="" builder=default base_image="" cuda_image="" make_base=0 ca_bundle="" torch_index="" torch_wheel=""
prefix=splitasr report="" keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --engine) engine="$2"; shift 2 ;;
        --builder) builder="$2"; shift 2 ;;
        --base-image) base_image="$2"; shift 2 ;;
        --cuda-image) cuda_image="$2"; shift 2 ;;
        --make-base) make_base=1; shift ;;
        --ca-bundle) ca_bundle="$2"; shift 2 ;;
        --torch-index-url) torch_index="$2"; shift 2 ;;
        --torch-wheel) torch_wheel="$2"; shift 2 ;;
        --tag-prefix) prefix="$2"; shift 2 ;;
        --report) report="$2"; shift 2 ;;
        --keep) keep=1; shift ;;
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        *) echo "test-images.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

fail() { echo "test-images.sh: $*" >&2; exit 1; }
log() { echo "test-images.sh: $*" >&2; }

if [ -z "$engine" ]; then
    if command -v podman >/dev/null; then engine=podman
    elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then engine=docker
    else echo "test-images.sh: neither podman nor a running docker found" >&2; exit 2; fi
fi
# podman: runc (crun fails on some cgroup v1 hosts), room for torch's threads and files
run_opts=() build_opts=(--network host)
if [ "$engine" = podman ]; then
    run_opts=(--runtime runc --ulimit nofile=20000:20000 --ulimit nproc=32768:32768)
    build_opts+=(--format docker --runtime runc --ulimit nofile=20000:20000)  # docker format keeps HEALTHCHECK
elif [ "$builder" = classic ]; then
    export DOCKER_BUILDKIT=0
elif [ "$builder" = buildkit ]; then
    export DOCKER_BUILDKIT=1
fi

# -- the base image ---------------------------------------------------------------------------------
if [ "$make_base" = 1 ]; then
    base_image="${base_image:-localhost/splitasr-base:bookworm}"
    if ! "$engine" image inspect "$base_image" >/dev/null 2>&1; then
        bash scripts/make-base-image.sh --engine "$engine" --tag "$base_image" >&2
    fi
fi
base_image="${base_image:-python:3.11-slim-bookworm}"
cuda_image="${cuda_image:-$base_image}"

# -- CA bundle for the build stages ----------------------------------------------------------------
ca_file=docker/build-ca/ca.crt
cleanup_files=("$ca_file")
if [ "$ca_bundle" != none ]; then
    ca_bundle="${ca_bundle:-${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}}"
    [ -f "$ca_bundle" ] && cp "$ca_bundle" "$ca_file"
fi

# -- where the build finds the CPU torch wheel -----------------------------------------------------
work=$(mktemp -d)
index_pid=""
containers=() volumes=()
cleanup() {
    for c in "${containers[@]}"; do "$engine" rm -f "$c" >/dev/null 2>&1 || true; done
    if [ "$keep" = 0 ]; then for v in "${volumes[@]}"; do "$engine" volume rm -f "$v" >/dev/null 2>&1 || true; done; fi
    [ -n "$index_pid" ] && kill "$index_pid" 2>/dev/null || true
    rm -rf "$work" "${cleanup_files[@]}"
}
trap cleanup EXIT

pin=$(python3 -c 'import re, tomllib; deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["server"]; print(next(d for d in deps if re.match(r"torch\s*==", d)).split("==")[1].strip())')
cpu_index=https://download.pytorch.org/whl/cpu
if [ -z "$torch_index" ] && [ -z "$torch_wheel" ]; then
    if python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/torch/", timeout=15)' "$cpu_index" 2>/dev/null; then
        torch_index=$cpu_index
    else
        log "PyTorch's CPU index is unreachable; asking this host's pip for torch==$pin"
        python3 -m pip download --quiet --no-deps --only-binary :all: --dest "$work/wheel" "torch==$pin" >&2 \
            || fail "no torch==$pin wheel available to this host's pip; pass --torch-wheel or --torch-index-url"
        torch_wheel=$(ls "$work"/wheel/torch-*.whl)
    fi
fi
if [ -n "$torch_wheel" ]; then
    name=$(basename "$torch_wheel")
    case "$name" in
        *+cpu*) ;;
        *) fail "$name is not a CPU build (no +cpu in its version): it would make the cpu image CUDA-sized" ;;
    esac
    mkdir -p "$work/index/simple/torch"
    ln -s "$(readlink -f "$torch_wheel")" "$work/index/$name"
    quoted=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1]))' "$name")
    echo "<a href=\"../../$quoted\">$name</a>" > "$work/index/simple/torch/index.html"
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    python3 -m http.server --bind 127.0.0.1 --directory "$work/index" "$port" >/dev/null 2>&1 &
    index_pid=$!
    torch_index="http://127.0.0.1:$port/simple"
    for _ in $(seq 50); do python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/")' "$torch_index" 2>/dev/null && break; sleep 0.1; done
    log "serving $name at $torch_index (reached by the build over the host network)"
fi

# -- build --------------------------------------------------------------------------------------------
server_tag="$prefix-server:cpu" device_tag="$prefix-device:latest"
build() {  # build TAG DOCKERFILE ARGS...: prints seconds
    local tag="$1" file="$2"; shift 2
    local start=$SECONDS
    "$engine" build "${build_opts[@]}" -f "$file" -t "$tag" "$@" . >&2 || fail "building $tag failed"
    echo $((SECONDS - start))
}
size_mb() { "$engine" image inspect --format '{{.Size}}' "$1" | awk '{printf "%d", $1 / 1000000}'; }
log "building $device_tag and $server_tag with $engine (builder $builder) on $base_image"
device_s=$(build "$device_tag" docker/device.Dockerfile --build-arg "PYTHON_IMAGE=$base_image")
server_s=$(build "$server_tag" docker/server.Dockerfile --build-arg VARIANT=cpu --build-arg "PYTHON_IMAGE=$base_image" \
    --build-arg "CUDA_IMAGE=$cuda_image" --build-arg "TORCH_INDEX_URL=$torch_index")
healthcheck=$("$engine" image inspect --format '{{json .Config.Healthcheck}}' "$server_tag")
case "$healthcheck" in *readyz*) ;; *) fail "the server image has no HEALTHCHECK (podman needs --format docker)" ;; esac
"$engine" run --rm "${run_opts[@]}" --entrypoint python "$server_tag" -c \
    'import torch, sys; v = torch.__version__; sys.exit(0 if "+cpu" in v or not torch.version.cuda else f"torch {v} is a CUDA build")' \
    || fail "the cpu image holds a CUDA torch"

# -- smoke test -----------------------------------------------------------------------------------------
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
rest_port=$(free_port) grpc_port=$(free_port)
token="images-smoke-$(python3 -c 'import secrets; print(secrets.token_hex(12))')"
run_id="$prefix-smoke-$$"
volumes=("$run_id-cache" "$run_id-adapters" "$run_id-demo")
for v in "${volumes[@]}"; do "$engine" volume create "$v" >/dev/null; done
server="$run_id-server"
containers=("$server")
"$engine" run -d --name "$server" "${run_opts[@]}" --network host \
    -e SPLITASR_API_KEYS="$token:demo" -e SPLITASR_PORT="$rest_port" -e SPLITASR_GRPC_PORT="$grpc_port" \
    -e SPLITASR_HOST=127.0.0.1 -e SPLITASR_SHUTDOWN_GRACE_SECONDS=5 \
    -v "$run_id-cache:/var/cache/splitasr" -v "$run_id-adapters:/var/lib/splitasr/adapters" "$server_tag" >/dev/null
start=$SECONDS ready_s=""
while [ $((SECONDS - start)) -lt 300 ]; do
    if curl -fsS "http://127.0.0.1:$rest_port/readyz" >/dev/null 2>&1; then ready_s=$((SECONDS - start)); break; fi
    [ "$("$engine" inspect --format '{{.State.Running}}' "$server")" = true ] || break
    sleep 1
done
[ -n "$ready_s" ] || { "$engine" logs "$server" 2>&1 | tail -20 >&2; fail "the server did not become ready"; }
# the image's HEALTHCHECK itself: podman runs it on request; docker runs it every 10 s
if [ "$engine" = podman ]; then
    health=$(podman healthcheck run "$server" >/dev/null 2>&1 && echo healthy || echo unhealthy)
else
    for _ in $(seq 40); do
        health=$(docker inspect --format '{{.State.Health.Status}}' "$server")
        [ "$health" = starting ] || break
        sleep 1
    done
fi
[ "$health" = healthy ] || fail "the image's HEALTHCHECK says $health"
rest=$(curl -fsS "http://127.0.0.1:$rest_port/v1/audio/transcriptions" -H "Authorization: Bearer $token" \
    -F file=@tests/data/real-speech/misc/goforward.flac -F model=tiny.en) || fail "REST transcription failed"
case "$rest" in *[Ff]orward*) ;; *) fail "unexpected REST transcript: $rest" ;; esac

# the device side, as in the compose demo: a fresh adapter, enrolled and used over gRPC
"$engine" run --rm "${run_opts[@]}" -v "$run_id-cache:/var/cache/splitasr" -v "$run_id-demo:/var/lib/splitasr/demo" \
    -v "$PWD/docker/demo:/demo/bin:ro" "$server_tag" python /demo/bin/sample_adapter.py \
    /var/lib/splitasr/demo/sample.safetensors >&2 || fail "writing the sample adapter failed"
device=$("$engine" run --rm "${run_opts[@]}" --network host \
    -e SPLITASR_DEVICE_SERVER="127.0.0.1:$grpc_port" -e DEMO_API_KEYS="$token:demo" \
    -e SPLITASR_DEVICE_ADAPTER=/demo/data/sample.safetensors -v "$run_id-demo:/demo/data:ro" \
    -v "$PWD/docker/demo:/demo/bin:ro" -v "$PWD/tests/data/real-speech/misc/goforward.flac:/demo/audio/goforward.flac:ro" \
    --entrypoint sh "$device_tag" /demo/bin/device_demo.sh 2>&1) || { echo "$device" >&2; fail "the device demo failed"; }
case "$device" in *[Ff]orward*) ;; *) echo "$device" >&2; fail "unexpected device transcript" ;; esac

stop_start=$SECONDS
"$engine" stop -t 30 "$server" >/dev/null
stop_s=$((SECONDS - stop_start))
exit_code=$("$engine" inspect --format '{{.State.ExitCode}}' "$server")
[ "$exit_code" = 0 ] || fail "the server exited with $exit_code on SIGTERM"

json=$(python3 - "$engine" "$builder" "$base_image" "$torch_index" "$device_s" "$server_s" "$(size_mb "$device_tag")" \
    "$(size_mb "$server_tag")" "$ready_s" "$health" "$rest" "$(echo "$device" | tail -1)" "$stop_s" "$exit_code" <<'EOF'
import json, sys
a = sys.argv[1:]
print(json.dumps({"engine": a[0], "builder": a[1], "base_image": a[2], "torch_index": a[3],
                  "build_seconds": {"device": int(a[4]), "server_cpu": int(a[5])},
                  "image_mb": {"device": int(a[6]), "server_cpu": int(a[7])},
                  "server_ready_s": int(a[8]), "healthcheck": a[9], "rest_transcript": json.loads(a[10])["text"],
                  "device_transcript": a[11], "stop_s": int(a[12]), "exit_code": int(a[13])}, indent=1))
EOF
)
echo "$json"
[ -z "$report" ] || echo "$json" > "$report"
