"""The image and the cluster manifests: rendered from one source, and each point an operator
relies on checked on what `kubectl apply` would receive (cluster/rendered/*.yaml)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from pipeline.models.pull import stored_name
from pipeline.models.registry import get_spec
from pipeline.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "cluster"))
import render  # noqa: E402  (cluster/render.py, a script)

STAGES = {"Ingress", "Fetcher", "Moderator", "Segmenter", "Uploader", "RateLimiter"}
VALUES = yaml.safe_load((ROOT / "cluster" / "values.yaml").read_text())
PROFILES = list(VALUES["profiles"])
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
RAY_PIN = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("ray[")).split("==")[1]


def rendered(profile: str) -> dict[str, dict]:
    docs = list(yaml.safe_load_all((ROOT / "cluster" / "rendered" / f"{profile}.yaml").read_text()))
    return {d["kind"]: d for d in docs}


def pods(service: dict) -> list[tuple[str, dict]]:
    cluster = service["spec"]["rayClusterConfig"]
    return [("head", cluster["headGroupSpec"]["template"]["spec"])] + [
        (g["groupName"], g["template"]["spec"]) for g in cluster["workerGroupSpecs"]
    ]


def serve_config(profile: str) -> dict:
    return yaml.safe_load(
        (ROOT / "cluster" / VALUES["profiles"][profile].get("serve_config", "serve_config.gpu.yaml")).read_text()
    )


def test_rendered_manifests_are_up_to_date():
    assert render.main(["--check"]) == 0, "run `make manifests`"


@pytest.mark.parametrize("profile", PROFILES)
def test_each_profile_embeds_its_serve_config_verbatim(profile):
    service = rendered(profile)["RayService"]
    source = render.profile_of(VALUES, profile)["serve_config"]
    assert service["spec"]["serveConfigV2"] == (ROOT / "cluster" / source).read_text()
    assert service["spec"]["rayClusterConfig"]["rayVersion"] == RAY_PIN
    assert source == {"dev-cpu": "serve_config.cpu.yaml"}.get(profile, "serve_config.gpu.yaml")


@pytest.mark.parametrize("profile", PROFILES)
def test_every_container_runs_the_image_and_installs_nothing_at_start(profile):
    service = rendered(profile)["RayService"]
    flavour = render.profile_of(VALUES, profile)["flavour"]
    image = f"{VALUES['image']}:{PYPROJECT['project']['version']}-{flavour}"
    for group, pod in pods(service):
        for container in pod["containers"]:
            assert container["image"] == image, group
            start = " ".join(container.get("command", []) + container.get("args", []))
            assert not re.search(r"pip|git|uv |curl|wget|apt", start), (group, start)
            requests = container["resources"]["requests"]
            assert requests["cpu"] and requests["memory"], group  # every container asks for what it uses
            assert container["resources"]["limits"]["memory"] == requests["memory"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        assert pod["serviceAccountName"] == VALUES["service_account"]  # Workload Identity
    autoscaler = service["spec"]["rayClusterConfig"]["autoscalerOptions"]["resources"]["requests"]
    assert autoscaler["cpu"] and autoscaler["memory"]  # the sidecar KubeRay adds to the head


@pytest.mark.parametrize("profile", PROFILES)
def test_gpus_are_requested_where_the_segmenter_needs_them(profile):
    service = rendered(profile)["RayService"]
    deployments = {d["name"]: d for d in serve_config(profile)["applications"][0]["deployments"]}
    segmenter = deployments["Segmenter"]["ray_actor_options"]
    gpu_groups = []
    for group, pod in pods(service):
        (container,) = pod["containers"]
        gpus = container["resources"]["requests"].get("nvidia.com/gpu")
        assert gpus == container["resources"]["limits"].get("nvidia.com/gpu"), group
        if gpus:
            gpu_groups.append(group)
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
            assert pod["nodeSelector"]["cloud.google.com/gke-accelerator"].startswith("nvidia-")
            assert int(gpus) >= segmenter.get("num_gpus", 0)
            assert float(container["resources"]["requests"]["cpu"]) >= segmenter["num_cpus"]
    if profile == "dev-cpu":
        assert gpu_groups == [] and "num_gpus" not in segmenter
    else:
        assert gpu_groups == ["gpu"] and segmenter["num_gpus"] == 1


@pytest.mark.parametrize("profile", PROFILES)
def test_the_head_runs_no_replicas(profile):
    service = rendered(profile)["RayService"]
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]
    assert head["num-cpus"] == "0" and head["num-gpus"] == "0"
    for d in serve_config(profile)["applications"][0]["deployments"]:
        assert d["ray_actor_options"]["num_cpus"] > 0, d["name"]  # so none fits on a head with no CPUs


@pytest.mark.parametrize("profile", PROFILES)
def test_readiness_is_the_applications_healthz(profile):
    from deployments.ingress import HEALTH_ROUTE

    docs = rendered(profile)
    for group, pod in pods(docs["RayService"]):
        probe = pod["containers"][0]["readinessProbe"]["httpGet"]
        assert (probe["path"], probe["port"]) == (HEALTH_ROUTE, 8000), group
    health = docs["BackendConfig"]["spec"]["healthCheck"]
    assert (health["requestPath"], health["port"]) == (HEALTH_ROUTE, 8000)  # the load balancer's check too


@pytest.mark.parametrize("profile", PROFILES)
def test_tokens_and_the_url_signing_key_come_from_secrets(profile, tmp_path):
    text = (ROOT / "cluster" / "rendered" / f"{profile}.yaml").read_text()
    for group, pod in pods(rendered(profile)["RayService"]):
        (container,) = pod["containers"]
        env = {e["name"]: e for e in container["env"]}
        for name in ("CUTOUT_URL_SIGNING_KEY", "RAY_AUTH_TOKEN"):
            assert env[name]["valueFrom"]["secretKeyRef"]["name"] == VALUES["secret"], (group, name)
            assert "value" not in env[name]
        tokens = Path(env["CUTOUT_TOKENS_FILE"]["value"])
        mount = next(m for m in container["volumeMounts"] if tokens.parent == Path(m["mountPath"]))
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert volume["secret"]["secretName"] == VALUES["secret"] and mount["readOnly"] is True
        assert {"key": "tokens.json", "path": tokens.name} in volume["secret"]["items"]
    # the settings the pods get are valid together with the profile's application args
    args = {**serve_config(profile)["applications"][0]["args"], "data_dir": str(tmp_path)}
    settings = load_settings(args, environ={"CUTOUT_TOKENS_FILE": str(tokens), "CUTOUT_URL_SIGNING_KEY": "k" * 40})
    assert settings.tokens_file == tokens
    assert not re.search(r"(?i)(password|secret|key|token)\s*:\s*['\"]?[A-Za-z0-9+/]{24,}", text)  # nothing inline


@pytest.mark.parametrize("profile", PROFILES)
def test_a_service_behind_an_https_only_ingress(profile):
    docs = rendered(profile)
    service = docs["RayService"]["spec"]["serveService"]
    assert {"name": "serve", "port": 8000, "targetPort": 8000} in service["spec"]["ports"]
    ingress = docs["Ingress"]
    (rule,) = ingress["spec"]["rules"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert (backend["name"], backend["port"]["number"]) == (service["metadata"]["name"], 8000)
    assert ingress["metadata"]["annotations"]["kubernetes.io/ingress.allow-http"] == "false"
    cert = ingress["metadata"]["annotations"]["networking.gke.io/managed-certificates"]
    assert cert == docs["ManagedCertificate"]["metadata"]["name"]
    assert docs["ManagedCertificate"]["spec"]["domains"] == [rule["host"]] == [VALUES["host"]]
    assert docs["BackendConfig"]["spec"]["timeoutSec"] > serve_config(profile)["http_options"]["request_timeout_s"]
    assert '"ingress": true' in service["metadata"]["annotations"]["cloud.google.com/neg"]
    assert docs["RayService"]["spec"]["upgradeStrategy"]["type"] == "NewCluster"  # docs/cluster.md, Upgrades


def test_the_redis_profile_adds_gcs_fault_tolerance_and_nothing_else():
    with_redis, without = rendered("gpu-redis")["RayService"], rendered("gpu")["RayService"]
    ft = with_redis["spec"]["rayClusterConfig"].pop("gcsFaultToleranceOptions")
    assert ft["redisAddress"] == VALUES["profiles"]["gpu-redis"]["redis"]["address"]
    assert ft["redisPassword"]["valueFrom"]["secretKeyRef"] == {"name": VALUES["secret"], "key": "redis-password"}
    assert with_redis == without
    assert all(
        "gcsFaultToleranceOptions" not in rendered(p)["RayService"]["spec"]["rayClusterConfig"] for p in ("gpu", "dev-cpu")
    )


def test_the_gpu_profile_serves_birefnet_in_float16_from_the_bucket():
    args = serve_config("gpu")["applications"][0]["args"]
    spec = get_spec(args["segmenter_model"])
    assert spec.name == "birefnet-general" and "MIT" in spec.licence and spec.commercial_use
    assert args["segmenter_dtype"] == "float16" and args["segmenter_device"] == "cuda"
    # what `cutout weights pull birefnet-general --to gs://BUCKET/models` stores and prints
    assert args["segmenter_weights_uri"] == f"gs://my-cutouts/models/{stored_name(spec, spec.hub.revision)}"
    assert args["segmenter_weights_sha256"] == spec.hub.pinned_sha256(spec.hub.revision)
    # the results bucket's lifecycle rule deletes results only, never the weights beside them
    rules = yaml.safe_load((ROOT / "cluster" / "gcs" / "lifecycle.json").read_text())["rule"]
    assert all(r["condition"].get("matchesPrefix") == ["cutouts/"] for r in rules)


def test_the_dockerfile_pins_agree_with_pyproject_and_the_manifests():
    dockerfile = (ROOT / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (RAY_VERSION|PYTHON_TAG)=(\S+)$", dockerfile, re.M))
    assert args["RAY_VERSION"] == RAY_PIN == render.project_versions()["ray"]
    assert args["PYTHON_TAG"] == render.PYTHON_TAG == f"py{sys.version_info.major}{sys.version_info.minor}"
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert SpecifierSet(PYPROJECT["project"]["requires-python"]).contains(python)  # the image's Python is the tests'
    stages = dict((m[1], m[0]) for m in re.findall(r"^FROM (\S+) AS (\w+)$", dockerfile, re.M))  # stage name -> base image
    assert stages["cpu"] == stages["build"] == "rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-cpu"
    assert stages["gpu"] == "rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-gpu"
    for target in ("cpu", "gpu"):
        stage = dockerfile.split(f"AS {target}\n", 1)[1].split("\nFROM ", 1)[0]
        users = re.findall(r"^USER (\S+)$", stage, re.M)
        assert users and users[-1].split(":")[0] not in ("root", "0"), target  # runs as non-root
        assert "apt-get purge" in stage and "gcc" in stage, target  # no compiler left
        assert "--constraint /tmp/requirements.lock" in stage and "from=build" in stage, target
        assert "verified_packaged_file(get_spec('u2netp').onnx)" in stage and "320n.onnx" in stage
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and line[0] != "#"]
    assert ignore[0] == "*" and "!pipeline/" in ignore and ".venv" not in [i.lstrip("!") for i in ignore if i.startswith("!")]


def test_the_lock_satisfies_pyproject():
    lock = dict(
        line.split("==") for line in (ROOT / "requirements.lock").read_text().splitlines() if line and not line.startswith("#")
    )
    lock = {canonicalize_name(k): v for k, v in lock.items()}
    for dep in PYPROJECT["project"]["dependencies"]:
        req = Requirement(dep)
        assert req.specifier.contains(lock[canonicalize_name(req.name)], prereleases=True), dep
    assert lock["ray"] == RAY_PIN


def test_gcs_setup_script_sets_what_the_service_relies_on():
    import json

    script = (ROOT / "cluster" / "gcs" / "setup.sh").read_text()
    for needle in (
        "--uniform-bucket-level-access",
        "--clear-soft-delete",
        "--lifecycle-file",
        "roles/storage.objectCreator",
        "roles/storage.objectViewer",
        "roles/iam.serviceAccountTokenCreator",
        "roles/iam.workloadIdentityUser",
        "iam.gke.io/gcp-service-account",
    ):
        assert needle in script, needle
    rules = json.loads((ROOT / "cluster" / "gcs" / "lifecycle.json").read_text())["rule"]
    assert any(r["action"]["type"] == "Delete" and r["condition"]["age"] == 1 for r in rules)


def test_every_config_has_each_stage_and_valid_args(tmp_path):
    for path in (
        ROOT / "serve_config.yaml",
        ROOT / "cluster" / "serve_config.gpu.yaml",
        ROOT / "cluster" / "serve_config.cpu.yaml",
    ):
        config = yaml.safe_load(path.read_text())
        app = config["applications"][0]
        assert app["name"] == "product_cutout" and app["route_prefix"] == "/"
        assert app["import_path"] == "deployments.app:build_app"
        deployments = {d["name"]: d for d in app["deployments"]}
        assert set(deployments) == STAGES, path
        # one shared limiter; on one machine one ingress replica answers port 8000 itself (serve.env)
        fixed = {"RateLimiter"} | ({"Ingress"} if path.name == "serve_config.yaml" else set())
        for name, d in deployments.items():
            assert "ray_actor_options" in d
            assert ("autoscaling_config" in d) != (name in fixed), name
        assert deployments["RateLimiter"]["num_replicas"] == 1  # one shared limiter
        args = {**app["args"], "data_dir": str(tmp_path)}
        settings = load_settings(args, environ={})
        if settings.segmenter_device == "cuda":
            assert deployments["Segmenter"]["ray_actor_options"].get("num_gpus") == 1
        seg = deployments["Segmenter"]
        assert seg["max_ongoing_requests"] >= 2 * settings.segmenter_batch_size
        # the ingress must have room to answer 503 to what it refuses at capacity
        assert deployments["Ingress"]["max_ongoing_requests"] > settings.ingress_max_inflight
