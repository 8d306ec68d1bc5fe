"""The application on a multi-node Ray cluster on this machine (tests/cluster_harness.py).

A head with no CPUs, two CPU worker nodes and a worker node with two logical GPUs. There is no
CUDA here: the segmenter is placed by the GPU requirement of ``cluster/serve_config.gpu.yaml``
but runs its CPU engine (u2netp, ONNX). Run alone with ``make test-cluster``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.cluster_harness import (
    STAGES,
    ClusterService,
    Load,
    Timeline,
    gpu_segmenter_options,
    inject_faults,
    results_on_disk,
    running_cluster,
)
from tests.images import b64, encode, eval_image, product_photo
from tests.integration.test_metrics import dashboard_metric_names, scrape, total

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

CLIENTS = 8  # closed-loop clients of the load step: well over the segmenter's target of 4 in flight
SCALE_BOUND_S = 240  # how long the autoscaler may take before the test gives up (not a measure)


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterService]:
    with running_cluster(env_extra={"CUTOUT_ACCESS_LOG_FORMAT": "json"}) as svc:
        yield svc


@pytest.fixture(scope="module")
def photo_url(image_server) -> str:
    image_server.files["/step.jpg"] = encode(product_photo(480, 360), "JPEG")
    return image_server.url + "/step.jpg"


def test_the_segmenter_lands_on_the_gpu_node_and_the_head_runs_no_replica(cluster, photo_url):
    assert gpu_segmenter_options().get("num_gpus", 0) >= 1  # the requirement this cluster places by
    replicas = cluster.replicas()
    assert {r.deployment for r in replicas} == set(STAGES)
    assert not [r for r in replicas if r.node == "head"], replicas
    assert {r.node for r in replicas if r.deployment == "Segmenter"} == {"gpu"}
    assert {r.node for r in replicas} <= {"cpu-1", "cpu-2", "gpu"}
    r = cluster.post({"image_url": photo_url, "sku": "placed"})
    assert r.status_code == 200, r.text
    assert r.json()["sku"] == "placed"


def test_a_load_step_scales_the_segmenter_alone_and_every_stage_comes_back_down(cluster, photo_url):
    with Timeline(cluster) as timeline:
        assert timeline.wait_for(lambda c: all(c.get(s) == 1 for s in STAGES), SCALE_BOUND_S)
        step_from = timeline.now()
        with Load(cluster, {"image_url": photo_url}, CLIENTS) as load:
            scaled = timeline.wait_for(lambda c: c.get("Segmenter", 0) >= 2, SCALE_BOUND_S)
            segmenter_nodes = [r.node for r in cluster.replicas() if r.deployment == "Segmenter"]
            # a few more samples at two segmenters: the other stages had their chance to scale too
            timeline.wait_for(lambda c: False, 5)
        step_until = timeline.now()
        during = timeline.peak(step_from, step_until)
        back = timeline.wait_for(lambda c: all(c.get(s) == 1 for s in STAGES), SCALE_BOUND_S)
    assert scaled, timeline.samples[-5:]
    assert during["Segmenter"] >= 2
    assert {s: during[s] for s in STAGES if s != "Segmenter"} == {s: 1 for s in STAGES if s != "Segmenter"}, during
    assert back, timeline.samples[-5:]
    statuses = {o.status for o in load.outcomes}
    assert statuses == {200}, [o for o in load.outcomes if o.status != 200][:5]
    assert segmenter_nodes == ["gpu"] * len(segmenter_nodes) and len(segmenter_nodes) >= 2  # both on the GPU node


def test_each_node_exports_the_metrics_of_its_replicas_and_the_dashboard_finds_them_all(cluster, photo_url, eval_dir):
    """Scraped node by node, as Prometheus scrapes a KubeRay cluster's pods: every metric the
    Grafana dashboard queries is exported by some node, and each stage's metrics come from the
    nodes its replicas run on (the segmenter's from the GPU node only)."""
    for i in range(3):  # traffic of this test's own, whatever ran before
        assert cluster.post({"image_url": photo_url, "sku": f"metered-{i}"}).status_code == 200
    # a refusal, and a moderation refusal: their counters exist once something was counted
    assert cluster.post({"image_url": photo_url}, token="ct_not-a-token-of-this-cluster").status_code == 401
    face = {"file": b64(eval_image("person1.jpg").read_bytes()), "content_moderation": True}
    assert cluster.post(face).status_code == 422
    wanted = dashboard_metric_names()
    placed: dict[str, set[str]] = {}
    for replica in cluster.replicas():
        placed.setdefault(replica.deployment, set()).add(replica.node)
    deadline = time.monotonic() + 90  # each node's agent exports with a delay
    while True:
        by_node = {name: scrape(url) for name, url in cluster.metrics_urls.items()}
        exported = set().union(*(set(s) for s in by_node.values()))
        if wanted <= exported or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert sorted(wanted - exported) == [], "queried by the dashboard, exported by no node"
    batches = {name: total(s, "ray_cutout_segmenter_batch_size_count") for name, s in by_node.items()}
    assert {name for name, n in batches.items() if n > 0} == placed["Segmenter"] == {"gpu"}, batches
    served = {name: total(s, "ray_cutout_requests_total", route="/product/cutout", status="200") for name, s in by_node.items()}
    assert sum(served.values()) >= 3 and {name for name, n in served.items() if n > 0} <= placed["Ingress"], served
    assert by_node["head"].get("ray_cutout_requests_total") is None  # the head runs no replica


def test_the_ingress_replicas_write_one_json_access_line_per_request_without_the_token(cluster, photo_url):
    answers = [cluster.post({"image_url": photo_url, "sku": f"logged-{i}"}) for i in range(3)]
    answers.append(cluster.post({"image_url": photo_url, "sku": "logged-x"}, token="ct_not-a-token-of-this-cluster"))
    ids = {r.headers["X-Request-Id"]: r.status_code for r in answers}
    deadline = time.monotonic() + 30  # each line is written as its request ends, on the replica's node
    while not set(ids) <= {x["request_id"] for x in cluster.access_records()} and time.monotonic() < deadline:
        time.sleep(1)
    records = [x for x in cluster.access_records() if x["request_id"] in ids]
    assert sorted((x["request_id"], x["status"]) for x in records) == sorted(ids.items())  # one line each
    ok = sorted((x["org"], x["sku"], x["reason"]) for x in records if x["status"] == 200)
    assert ok == [("acme", f"logged-{i}", None) for i in range(3)]
    assert all({"fetch", "segment", "store"} <= set(x["stages_ms"]) for x in records if x["status"] == 200)
    text = json.dumps(cluster.access_records())
    assert cluster.token not in text and "ct_not-a-token-of-this-cluster" not in text


def test_a_catalog_runs_as_a_ray_data_job_through_the_handle_and_resumes(cluster, image_server, tmp_path):
    good, missing, not_images = 200, 12, 8
    rows = []
    for i in range(good):
        image_server.files[f"/cat/{i}.jpg"] = encode(product_photo(160 + i % 7, 120), "JPEG")
        rows.append((f"SKU-{i}", f"{image_server.url}/cat/{i}.jpg"))
    rows += [(f"GONE-{i}", f"{image_server.url}/cat/missing-{i}.jpg") for i in range(missing)]
    for i in range(not_images):
        image_server.files[f"/cat/page-{i}.html"] = b"<html>not an image</html>"
        rows.append((f"PAGE-{i}", f"{image_server.url}/cat/page-{i}.html"))
    catalog, first_half, out = tmp_path / "catalog.csv", tmp_path / "first.csv", tmp_path / "results.jsonl"
    catalog.write_text("sku,image_url\n" + "".join(f"{s},{u}\n" for s, u in rows))
    first_half.write_text("".join(f"{s},{u}\n" for s, u in rows[::2]))  # every other row, no header

    def batch(csv: Path) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "pipeline.cli", "batch", str(csv), "--out", str(out), "--org", "acme"]
        command += ["--concurrency", "8", "--address", cluster.ray_address]
        return subprocess.run(command, env=cluster.env, capture_output=True, text=True, timeout=900)

    first = batch(first_half)
    assert first.returncode == 1, first.stderr[-3000:]  # some rows failed on purpose
    assert "already in the output" in first.stderr
    second = batch(catalog)
    assert second.returncode == 1, second.stderr[-3000:]
    summary = second.stderr.strip().splitlines()[-1]
    assert f"{len(rows)} rows: {good // 2} done" in summary and f"{len(rows[::2])} already in the output" in summary, summary
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["sku"] for line in lines) == sorted(s for s, _ in rows)  # each row once: the resume skipped
    by_kind = Counter((line["sku"].split("-")[0], line["status"], line.get("reason")) for line in lines)
    assert by_kind == {
        ("SKU", 200, None): good,
        ("GONE", 404, "image_not_found"): missing,
        ("PAGE", 415, "unsupported_format"): not_images,
    }, by_kind
    assert all("/results/acme/" in line["result_url"] for line in lines if line["status"] == 200)
    sample = next(line for line in lines if line["status"] == 200)
    assert requests.get(sample["result_url"], timeout=10).status_code == 200


def test_killing_a_replica_of_each_stage_then_a_worker_node_loses_no_request(cluster, photo_url):
    """Every answer is a 200 or a 429/503 with Retry-After, and the application is whole again
    within 60 s of each fault; nothing is stored for a request that failed.

    The requests in flight on an ingress replica that is killed (alone, or with its node) are
    answered by Serve's proxy: 503 with Retry-After (deployments/proxy.py), not the plain 500
    Serve gives by itself. docs/scaling.md has the table.
    """
    before = results_on_disk(cluster)
    clients = 4
    rows, load, probes = inject_faults(cluster, {"image_url": photo_url}, clients=clients)
    assert [row["stage"] for row in rows] == [*STAGES, ""], rows
    assert all(row["seconds_to_whole"] is not None for row in rows), rows  # whole again within 60 s
    outcomes = load.outcomes
    assert outcomes and not [o for o in outcomes if o.status == 0], "a request hung past its timeout or broke"
    for o in outcomes:
        assert o.status == 200 or (o.status in (429, 503) and o.retry_after), (o, [r["statuses"] for r in rows])
    assert sum(o.status == 200 for o in outcomes) > len(outcomes) / 2, [r["statuses"] for r in rows]
    # every stored result is one a client got a 200 for: nothing stored for a failed request,
    # but for one race no service can close: an ingress replica killed in the instant between
    # the upload and its answer (the uploader stores nothing for a caller already dead; the
    # result left is never handed out, and expires with the others). At most one such result
    # per request that Serve's proxy answered 503 when the ingress, or its node, went down.
    stored = results_on_disk(cluster) - before
    answered = {o.result_name for o in outcomes if o.status == 200}
    orphans = stored - answered - set(probes)
    lost_with_ingress = sum(
        count for r in rows if r["stage"] in ("Ingress", "") for key, count in r["statuses"].items() if key.startswith("503")
    )
    assert len(orphans) <= lost_with_ingress, (orphans, [r["statuses"] for r in rows])
