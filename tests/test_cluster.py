"""The cluster manifests agree with the configs and the settings they name are valid."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
STAGES = {"Ingress", "Fetcher", "Moderator", "Segmenter", "Uploader", "RateLimiter"}


def test_rayservice_embeds_the_gpu_serve_config():
    manifest = yaml.safe_load((ROOT / "cluster" / "rayservice.yaml").read_text())
    embedded = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    assert embedded == yaml.safe_load((ROOT / "cluster" / "serve_config.gpu.yaml").read_text())
    assert manifest["spec"]["rayClusterConfig"]["rayVersion"] == "2.60.0"
    gpu = next(g for g in manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"] if g["groupName"] == "gpu")
    res = gpu["template"]["spec"]["containers"][0]["resources"]
    assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["template"]["spec"]["tolerations"]
    text = (ROOT / "cluster" / "rayservice.yaml").read_text()
    assert "secretKeyRef" in text and "ray-auth-token" in text  # secrets by reference only
    assert embedded["applications"][0]["args"]["storage_uri"].startswith("gs://")
    pods = [manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    ]
    assert all(p.get("serviceAccountName") == "product-cutout" for p in pods)  # Workload Identity


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
    for path in (ROOT / "serve_config.yaml", ROOT / "cluster" / "serve_config.gpu.yaml"):
        config = yaml.safe_load(path.read_text())
        app = config["applications"][0]
        assert app["name"] == "product_cutout" and app["route_prefix"] == "/"
        assert app["import_path"] == "deployments.app:build_app"
        deployments = {d["name"]: d for d in app["deployments"]}
        assert set(deployments) == STAGES, path
        for name, d in deployments.items():
            assert "ray_actor_options" in d
            assert ("autoscaling_config" in d) != (name == "RateLimiter"), name
        assert deployments["RateLimiter"]["num_replicas"] == 1  # one shared limiter
        args = {**app["args"], "data_dir": str(tmp_path)}
        settings = load_settings(args, environ={})
        if settings.segmenter_device == "cuda":
            assert deployments["Segmenter"]["ray_actor_options"].get("num_gpus") == 1
        seg = deployments["Segmenter"]
        assert seg["max_ongoing_requests"] >= 2 * settings.segmenter_batch_size
        # the ingress must have room to answer 503 to what it refuses at capacity
        assert deployments["Ingress"]["max_ongoing_requests"] > settings.ingress_max_inflight
