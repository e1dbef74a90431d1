"""deploy/kuberay/rayservice.yaml against KubeRay's RayService CRD (v1.7.0, tests/data/kuberay/),
with unknown fields refused (as ``kubectl apply --validate=strict`` does), and its Serve config
against SplitASR: an importable application builder, arguments that are settings, the pinned Ray."""

from __future__ import annotations

import copy
import gzip
import importlib.util
import re
from pathlib import Path

import jsonschema
import pytest
import tomllib
import yaml

from splitasr.config import Settings

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "kuberay" / "rayservice.yaml"
CRD = ROOT / "tests" / "data" / "kuberay" / "ray.io_rayservices-v1.7.0.yaml.gz"


def strict(schema: dict) -> dict:
    """The schema with unknown properties refused wherever it lists the known ones."""
    schema = copy.deepcopy(schema)

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


@pytest.fixture(scope="module")
def documents() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(MANIFEST.read_text())}


@pytest.fixture(scope="module")
def schema() -> dict:
    crd = yaml.safe_load(gzip.decompress(CRD.read_bytes()))
    assert crd["spec"]["names"]["kind"] == "RayService"
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return strict(version["schema"]["openAPIV3Schema"])


def test_rayservice_matches_the_crd(documents, schema):
    service = documents["RayService"]
    assert service["apiVersion"] == "ray.io/v1"
    jsonschema.validate(service, schema)


def test_the_schema_check_catches_a_misspelt_field(documents, schema):
    broken = copy.deepcopy(documents["RayService"])
    broken["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParam"] = {}
    with pytest.raises(jsonschema.ValidationError, match="rayStartParam"):
        jsonschema.validate(broken, schema)


def test_serve_config_runs_splitasr(documents):
    config = yaml.safe_load(documents["RayService"]["spec"]["serveConfigV2"])
    (app,) = config["applications"]
    module, _, attribute = app["import_path"].partition(":")
    assert module == "splitasr.scale.app" and importlib.util.find_spec(module) is not None
    source = (ROOT / "server" / "scale" / "app.py").read_text()
    assert re.search(rf"^def {attribute}\(args", source, re.MULTILINE)
    args = app["args"]
    assert set(args) <= set(Settings.model_fields), "serveConfigV2 args must be settings (unknown ones are ignored)"
    settings = Settings(_env_file=None, **args)
    workers = documents["RayService"]["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    gpus = sum(int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))
               * g["replicas"] for g in workers)
    assert settings.replicas * settings.replica_gpus <= gpus, "more GPU replicas than the worker pods offer"


def test_ray_version_is_the_pinned_one(documents):
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["scale"]
    pinned = next(re.fullmatch(r"ray\[serve\]==(.+)", p).group(1) for p in pins if p.startswith("ray["))
    assert documents["RayService"]["spec"]["rayClusterConfig"]["rayVersion"] == pinned


def test_every_pod_mounts_the_shared_store(documents):
    assert documents["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    claim = documents["PersistentVolumeClaim"]["metadata"]["name"]
    store_dir = yaml.safe_load(documents["RayService"]["spec"]["serveConfigV2"])["applications"][0]["args"]["store_dir"]
    cluster = documents["RayService"]["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        volumes = {v["name"] for v in pod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == claim}
        mounts = {m["mountPath"] for c in pod["containers"] for m in c["volumeMounts"] if m["name"] in volumes}
        assert mounts == {store_dir}


@pytest.mark.parametrize("source", ["kuberay", "serve-config"])
def test_serve_configs_pass_ray_serves_own_schema(source, documents):
    schema = pytest.importorskip("ray.serve.schema", reason='Ray Serve is the scale extra: pip install -e ".[scale]"')
    if source == "kuberay":
        config = yaml.safe_load(documents["RayService"]["spec"]["serveConfigV2"])
    else:
        config = yaml.safe_load((ROOT / "deploy" / "ray" / "serve-config.yaml").read_text())
        (app,) = config["applications"]
        assert set(app["args"]) <= set(Settings.model_fields)
        Settings(_env_file=None, **app["args"])
    deploy = schema.ServeDeploySchema.model_validate(config)
    assert [a.import_path for a in deploy.applications] == ["splitasr.scale.app:app_builder"]
