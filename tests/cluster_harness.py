"""A multi-node Ray cluster on this machine running the real application, for tests and benchmarks.

:func:`running_cluster` starts, with Ray's own ``ray.cluster_utils.Cluster``, four Ray nodes
on this machine (they reach each other on its own address; HTTP is on loopback only): a head
with no CPUs (it holds Serve's controller and its HTTP proxy, never a
replica), two CPU worker nodes, and a worker node that declares two logical GPUs. It then
deploys the application by ``serve run`` of a copy of ``serve_config.yaml`` (the path
``make serve`` takes), with the segmenter asking for a GPU exactly as
``cluster/serve_config.gpu.yaml`` has it, so Ray places it on the GPU node.

The GPUs are logical: there is no CUDA here, so the segmenter keeps ``segmenter_device: cpu``
and runs its CPU engine (u2netp, ONNX) while Ray places it by its ``num_gpus``. The placement,
the replica counts and the nodes are those Serve and Ray report.

Requests go through Serve's HTTP proxy on the head (``proxy_location: HeadOnly``): every node of
this cluster shares one machine, so a proxy per node could not each own the port, and
the ingress replicas on the worker nodes are reached through the proxy like on a real cluster.
Ray's token authentication is off in this cluster (``RAY_AUTH_MODE=disabled``), unlike
``tests/harness.py``: the cluster's nodes are started from this very process, whose Ray reads its
authentication mode once, when it is first imported, and the test connects to the cluster as a
driver to read Serve's state. Serve's HTTP port listens on loopback only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from pipeline import tokens
from tests.harness import FACE_POLICY, ROOT, START_TIMEOUT_S, _ray_bin, _stop, access_log_lines, free_port
from tests.harness import ray_env as embedded_ray_env

APP = "product_cutout"
STAGES = ("Ingress", "Fetcher", "Moderator", "Segmenter", "Uploader", "RateLimiter")
GPU_CONFIG = ROOT / "cluster" / "serve_config.gpu.yaml"

# Replica counts for tests: every stage may scale out to two replicas; the short delays let a
# load step of a few tens of seconds show it (docs/scaling.md has the shipped reasoning).
TEST_AUTOSCALING: dict[str, dict[str, Any]] = {
    "Ingress": {"min_replicas": 1, "max_replicas": 2},
    "Fetcher": {"min_replicas": 1, "max_replicas": 2},
    "Moderator": {"min_replicas": 1, "max_replicas": 2},
    "Segmenter": {"min_replicas": 1, "max_replicas": 2},
    "Uploader": {"min_replicas": 1, "max_replicas": 2},
}
TEST_DELAYS = {"upscale_delay_s": 2, "downscale_delay_s": 8, "look_back_period_s": 4, "metrics_interval_s": 1}


def gpu_segmenter_options() -> dict[str, Any]:
    """The segmenter's ``ray_actor_options`` in ``cluster/serve_config.gpu.yaml``."""
    config = yaml.safe_load(GPU_CONFIG.read_text())
    deployments = config["applications"][0]["deployments"]
    return dict(next(d for d in deployments if d["name"] == "Segmenter")["ray_actor_options"])


@dataclass
class Replica:
    """One Serve replica as Ray's actor table has it."""

    deployment: str
    actor_id: str
    node: str
    pid: int


@dataclass
class ClusterService:
    """The application on the multi-node cluster, as tests and benchmarks see it."""

    url: str
    data_dir: Path
    ray_address: str
    token: str
    env: dict
    cluster: Any
    nodes: dict[str, Any] = field(default_factory=dict)
    metrics_urls: dict[str, str] = field(default_factory=dict)  # node name -> its Prometheus endpoint
    ray_tmp: Path | None = None  # Ray's temp folder, shared by the nodes (their sessions' logs)

    def access_records(self) -> list[dict]:
        """Every line of every replica's JSON access log (``CUTOUT_ACCESS_LOG_FORMAT=json``), all nodes."""
        return [json.loads(line) for line in access_log_lines(self.ray_tmp)] if self.ray_tmp else []

    def post(self, body: dict, token: str | None = "default", timeout: float = 120, **kw) -> requests.Response:
        headers = kw.pop("headers", {})
        if token is not None:
            headers["api_token"] = self.token if token == "default" else token
        return requests.post(self.url + "/product/cutout", json=body, headers=headers, timeout=timeout, **kw)

    def node_name(self, node_id: str) -> str:
        """``head``, ``cpu-1``, ``cpu-2`` or ``gpu`` for a Ray node id."""
        return next((name for name, node in self.nodes.items() if node.node_id == node_id), node_id)

    def replicas(self) -> list[Replica]:
        """The live replicas of the application, with the node each runs on (Ray's actor table)."""
        from ray._private import state

        found = []
        for actor in state.actors().values():
            name = actor.get("Name") or ""
            if actor.get("State") != "ALIVE" or not name.startswith(f"SERVE_REPLICA::{APP}#"):
                continue
            deployment = name.split("#")[1]
            found.append(Replica(deployment, actor["ActorID"], self.node_name(actor["Address"]["NodeID"]), actor["Pid"]))
        return found

    def running(self) -> dict[str, int]:
        """RUNNING replicas per deployment, from ``serve.status()``."""
        from ray import serve

        app = serve.status().applications.get(APP)
        if app is None:
            return {}
        return {name: d.replica_states.get("RUNNING", 0) for name, d in app.deployments.items()}

    def healthy(self) -> bool:
        try:
            return requests.get(self.url + "/healthz", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def remove_node(self, name: str) -> None:
        """Kill every process of a worker node at once (``kill -9``), as a lost machine would."""
        node = self.nodes.pop(name)
        self.cluster.remove_node(node, allow_graceful=False)


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def running_cluster(
    args: dict | None = None,
    autoscaling: dict[str, dict[str, Any]] | None = None,
    env_extra: dict | None = None,
) -> Iterator[ClusterService]:
    """Start the four-node cluster and the application on it; stop both after.

    Args:
        args: Application ``args`` to change.
        autoscaling: ``autoscaling_config`` fields per deployment, over :data:`TEST_AUTOSCALING`
            and :data:`TEST_DELAYS`.
        env_extra: Extra environment for every node and for ``serve run``.
    """
    from ray.cluster_utils import Cluster

    data_dir = Path(tempfile.mkdtemp(prefix="cutout-cluster-"))
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["proxy_location"] = "HeadOnly"
    config["http_options"]["port"] = port
    app = config["applications"][0]
    app["args"].update(
        data_dir=str(data_dir),
        public_base_url=url,
        allowed_source_networks=["127.0.0.0/8"],
        moderation_block=FACE_POLICY,
        # every client of a load step in the pipeline at once, so the stage that is slowest is
        # the one where they wait (the segmenter), as behind several ingress replicas
        ingress_max_inflight=16,
        admission_max_wait_s=30,
        torch_threads=1,
        rate_limit_rpm=100_000,  # the limiter is consulted on every request, and refuses none
        result_cache_s=0,  # every request runs the model: the load is the model's, not the cache's
        **(args or {}),
    )
    for deployment in app["deployments"]:
        name = deployment["name"]
        if name == "Segmenter":
            deployment["ray_actor_options"] = gpu_segmenter_options()
        if name in TEST_AUTOSCALING:
            # the ingress too autoscales on a cluster (as in the GPU profile), where one replica
            # holds up to 64 requests, most of them queued as idle coroutines
            deployment.pop("num_replicas", None)
            deployment.setdefault("autoscaling_config", {"target_ongoing_requests": 64})
            deployment["autoscaling_config"].update(TEST_AUTOSCALING[name], **TEST_DELAYS)
            deployment["autoscaling_config"].update((autoscaling or {}).get(name, {}))
    if app["args"].get("segmenter_device", "cpu") != "cpu":
        raise ValueError("no CUDA here: the segmenter runs its CPU engine on the logical GPU node")
    config_path = data_dir / "serve_config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    token = tokens.create_token(data_dir / "tokens.json", "acme")

    ray_env = {
        **embedded_ray_env(),  # serve.env, as `make serve` has it...
        # ...but through Serve's proxy, not direct ingress: several ingress replicas on nodes
        # that share one machine could not each own serve.env's port
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
        # replicas and handles report their load every second, not every ten: the autoscaler
        # sees a load step within the test's short delays
        "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
        "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
        # each node's metrics agent exports every second, not every ten (the metrics test)
        "RAY_metrics_report_interval_ms": "1000",
        "PYTHONPATH": str(ROOT),
        **(env_extra or {}),
    }
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CUTOUT_")}, **ray_env}
    common = {"object_store_memory": 200 * 1024 * 1024, "temp_dir": str(ray_tmp)}
    log = open(data_dir / "serve-run.log", "wb")
    proc = None
    cluster = None
    import ray

    with _environ(ray_env):
        try:
            # every node exports its own Prometheus metrics (as every KubeRay pod does on 8080)
            metrics_ports = {name: free_port() for name in ("head", "cpu-1", "cpu-2", "gpu")}
            cluster = Cluster(
                initialize_head=True,
                head_node_args={
                    "num_cpus": 0,
                    "include_dashboard": False,
                    "metrics_export_port": metrics_ports["head"],
                    **common,
                },
                shutdown_at_exit=True,
            )
            nodes = {"head": cluster.head_node}
            nodes["cpu-1"] = cluster.add_node(num_cpus=2, metrics_export_port=metrics_ports["cpu-1"], **common)
            nodes["cpu-2"] = cluster.add_node(num_cpus=2, metrics_export_port=metrics_ports["cpu-2"], **common)
            # CPUs for two segmenters (2 each, as the GPU profile asks) and a few small replicas
            # that Ray may place beside them
            nodes["gpu"] = cluster.add_node(num_cpus=6, num_gpus=2, metrics_export_port=metrics_ports["gpu"], **common)
            cluster.wait_for_nodes()
            ray.init(
                address=cluster.address,
                namespace="serve",
                logging_level="ERROR",
                log_to_driver=False,
            )
            proc = subprocess.Popen(
                [_ray_bin("serve"), "run", str(config_path), "--address", cluster.address],
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            metrics_urls = {name: f"http://127.0.0.1:{p}/metrics" for name, p in metrics_ports.items()}
            svc = ClusterService(url, data_dir, cluster.address, token, env, cluster, nodes, metrics_urls, ray_tmp)
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline and proc.poll() is None and not svc.healthy():
                time.sleep(1)
            if not svc.healthy():
                log.flush()
                tail = (data_dir / "serve-run.log").read_text(errors="replace")[-4000:]
                pytest.fail(f"the application did not become healthy on the cluster in {START_TIMEOUT_S}s:\n{tail}")
            yield svc
        finally:
            if proc is not None:
                _stop(proc, signal.SIGINT)
            log.close()
            ray.shutdown()
            if cluster is not None:
                cluster.shutdown()


@dataclass
class Outcome:
    """One request of a load: what the client saw."""

    started: float
    status: int  # 0: no answer within the client's timeout, or the connection broke
    reason: str | None = None
    retry_after: str | None = None
    result_name: str | None = None
    ended: float = 0.0


class Load:
    """Closed-loop clients: each posts ``body``, waits for the answer, and posts again.

    Used as a context manager: the clients run inside the ``with`` block; ``outcomes`` holds
    every answer, in the order they came.
    """

    def __init__(self, svc: ClusterService, body: dict, clients: int, timeout_s: float = 130) -> None:
        self.svc, self.body, self.clients, self.timeout_s = svc, body, clients, timeout_s
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _client(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                r = self.svc.post(self.body, timeout=self.timeout_s)
            except requests.RequestException:
                self.outcomes.append(Outcome(started, 0, ended=time.monotonic()))
                continue
            body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
            name = body.get("result_url", "").split("/results/")[-1].split("?")[0] if r.status_code == 200 else None
            reason = (body.get("error") or {}).get("reason") if r.status_code != 200 else None
            retry_after = r.headers.get("retry-after")
            self.outcomes.append(Outcome(started, r.status_code, reason, retry_after, name, time.monotonic()))

    def __enter__(self) -> Load:
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout_s + 10)

    def answered_since(self, t0: float) -> list[Outcome]:
        """The outcomes that came back after ``t0`` (requests in flight then among them)."""
        return [o for o in list(self.outcomes) if o.ended >= t0]


class Timeline:
    """Samples the RUNNING replicas of every deployment from ``serve.status()`` twice a second."""

    def __init__(self, svc: ClusterService, interval_s: float = 0.5) -> None:
        self.svc, self.interval_s = svc, interval_s
        self.samples: list[tuple[float, dict[str, int]]] = []
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.samples.append((time.monotonic() - self.t0, self.svc.running()))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> Timeline:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def wait_for(self, condition: Callable[[dict[str, int]], bool], timeout_s: float) -> bool:
        """Whether a sample meeting ``condition`` came within ``timeout_s`` (a bound, not a measure)."""
        deadline = time.monotonic() + timeout_s
        seen = len(self.samples)
        while time.monotonic() < deadline:
            if any(condition(c) for _, c in self.samples[seen:]):
                return True
            time.sleep(self.interval_s)
        return False

    def peak(self, since: float = 0.0, until: float = float("inf")) -> dict[str, int]:
        """The most RUNNING replicas each deployment had in the samples between the two times."""
        peak: dict[str, int] = {}
        for t, counts in self.samples:
            if since <= t <= until:
                for name, n in counts.items():
                    peak[name] = max(peak.get(name, 0), n)
        return peak

    def now(self) -> float:
        return time.monotonic() - self.t0


def results_on_disk(svc: ClusterService) -> set[str]:
    """Names of the result PNGs stored under the data folder (as in their URLs)."""
    root = svc.data_dir / "results"
    return {str(p.relative_to(root)) for p in root.rglob("*.png")} if root.exists() else set()


def recovered(svc: ClusterService, gone: set[str], body: dict, bound_s: float, probes: list[str]) -> float | None:
    """Seconds until the application is whole again after a fault, or None past ``bound_s``.

    Whole: the replicas named in ``gone`` are no longer listed, every deployment has a RUNNING
    replica, ``/healthz`` answers 200, and a fresh request gets a 200 (its result's name is
    added to ``probes``).
    """
    started = time.monotonic()
    while time.monotonic() - started < bound_s:
        with contextlib.suppress(Exception):
            listed = {r.actor_id for r in svc.replicas()}
            counts = svc.running()
            if not gone & listed and all(counts.get(s, 0) >= 1 for s in STAGES) and svc.healthy():
                r = svc.post(body, timeout=bound_s)
                if r.status_code == 200:
                    probes.append(r.json()["result_url"].split("/results/")[-1].split("?")[0])
                    return time.monotonic() - started
        time.sleep(0.5)
    return None


def inject_faults(svc: ClusterService, body: dict, clients: int, bound_s: float = 60) -> tuple[list[dict], Load, list[str]]:
    """Under closed-loop load, ``kill -9`` one replica of each stage in turn, then remove the
    CPU worker node holding the most replicas; after each, wait until the application is whole.

    Returns:
        One row per fault (what was killed, the statuses the clients saw from the kill until
        whole again, seconds to whole, None past ``bound_s``), the load with every outcome,
        and the result names of the requests that checked the recovery.
    """
    rows: list[dict] = []
    probes: list[str] = []
    with Load(svc, body, clients) as load:
        time.sleep(2)
        faults: list[tuple[str, str]] = [("replica", s) for s in STAGES]
        faults.append(("node", ""))
        for kind, stage in faults:
            t0 = time.monotonic()
            if kind == "replica":
                victims = [next(r for r in svc.replicas() if r.deployment == stage)]
                os.kill(victims[0].pid, signal.SIGKILL)
                what = f"replica of {stage} (kill -9)"
            else:
                on = [r for r in svc.replicas() if r.node in ("cpu-1", "cpu-2")]
                node = max(("cpu-1", "cpu-2"), key=lambda n: sum(r.node == n for r in on))
                victims = [r for r in on if r.node == node]
                svc.remove_node(node)
                what = f"worker node {node} ({', '.join(sorted(r.deployment for r in victims))})"
            seconds = recovered(svc, {v.actor_id for v in victims}, body, bound_s, probes)
            seen: dict[str, int] = {}
            during = load.answered_since(t0)
            for o in during:
                key = str(o.status) if o.status in (0, 200) else f"{o.status} {o.reason}"
                seen[key] = seen.get(key, 0) + 1
            rows.append({"fault": what, "stage": stage, "statuses": seen, "seconds_to_whole": seconds, "outcomes": during})
    return rows, load, probes
