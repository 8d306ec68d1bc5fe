"""The running application for tests and benchmarks: a free port and the service harness.

:func:`running_service` starts a real local Ray head (``ray start``) and deploys the
application from a copy of ``serve_config.yaml`` by ``serve run`` — the same path ``make serve``
takes — with test args: a temporary data folder, a free port, loopback opened for
``image_url``, a short URL lifetime (given through the environment, to exercise the
``CUTOUT_*`` overrides), and a moderation policy that also blocks faces so that moderation can
be seen on benign photos. ``tests/integration/conftest.py`` wraps it in fixtures;
``benchmarks/bench.py`` runs it as shipped.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

from pipeline import tokens

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin"
TTL_S = 12
CACHE_S = 12  # the result cache's period where a test turns it on (CUTOUT_RESULT_CACHE_S)
START_TIMEOUT_S = 420
FACE_POLICY = ["FACE_FEMALE", "FACE_MALE", "FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED"]


def free_port() -> int:
    """An unused TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_pair() -> int:
    """An unused TCP port on loopback whose next port is unused too."""
    for _ in range(100):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports on loopback")


def access_log_lines(ray_tmp: Path) -> list[str]:
    """Every line of every replica's JSON access log (``CUTOUT_ACCESS_LOG_FORMAT=json``) under Ray's
    temp folder, all sessions and nodes (``rglob`` does not follow the ``session_latest`` link)."""
    return [line for path in sorted(ray_tmp.rglob("access_*.jsonl")) for line in path.read_text().splitlines() if line.strip()]


def ray_env() -> dict[str, str]:
    """Ray's own settings of the embedded default, from serve.env (as `make serve` exports them)."""
    env = {}
    for line in (ROOT / "serve.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


@dataclass
class Service:
    """The running application, as tests see it."""

    url: str
    data_dir: Path
    ray_address: str
    token: str
    other_token: str
    log_dir: Path
    env: dict
    limited_token: str = ""
    head_pid: int = 0
    metrics_url: str = ""
    proxy_url: str = ""  # Serve's HTTP proxy: routes across every ingress replica

    def post(
        self, body: dict | bytes | Iterator[bytes], token: str | None = "default", via_proxy: bool = False, **kw
    ) -> requests.Response:
        """POST to /product/cutout: to the ingress replica's own port, or through Serve's proxy."""
        headers = kw.pop("headers", {})
        base = self.proxy_url if via_proxy else self.url
        if token is not None:
            headers["api_token"] = self.token if token == "default" else token
        if isinstance(body, dict):
            return requests.post(base + "/product/cutout", json=body, headers=headers, timeout=120, **kw)
        return requests.post(base + "/product/cutout", data=body, headers=headers, timeout=120, **kw)


def _ray_bin(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else shutil.which(name) or name


@contextlib.contextmanager
def running_service(
    args: dict | None = None,
    env_extra: dict | None = None,
    as_shipped: bool = False,
    deployments: dict[str, dict] | None = None,
    metrics: bool = False,
    dashboard: bool = False,
) -> Iterator[Service]:
    """Start a Ray head and the application from a copy of serve_config.yaml; stop both after.

    Args:
        args: Application ``args`` to change.
        env_extra: Extra environment for the cluster (``CUTOUT_*`` overrides among them).
        as_shipped: Keep the deployments' replica settings as serve_config.yaml has them
            (benchmarks); by default tests pin one replica per stage and two ingress replicas.
        deployments: Options of named deployments to set over those (benchmarks/gpu.py: a GPU
            for the segmenter).
        metrics: Export Prometheus metrics on a free port (``Service.metrics_url``), as
            ``make serve`` does on a fixed one; otherwise Ray picks a port nobody reads.
        dashboard: Run Ray's dashboard too, on a free port (benchmarks/processes.py measures it).
    """
    data_dir = Path(tempfile.mkdtemp(prefix="cutout-it-"))
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    port, proxy_port, ray_port = free_port_pair(), free_port(), free_port()
    metrics_port = free_port() if metrics else 0
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["http_options"]["port"] = proxy_port
    app = config["applications"][0]
    app["args"].update(
        data_dir=str(data_dir),
        public_base_url=f"http://127.0.0.1:{port}",
        allowed_source_networks=["127.0.0.0/8"],
        moderation_block=FACE_POLICY,
        # admission (pipeline slots, the wait limit) as shipped: the tests see what users see
        **(args or {}),
    )
    for deployment in [] if as_shipped else app["deployments"]:  # one replica each keeps the 2-core CI machine calm
        if "autoscaling_config" in deployment:
            deployment["autoscaling_config"]["max_replicas"] = 1
        if deployment["name"] == "Ingress":  # ...but two ingress replicas: limits must hold across them
            deployment["num_replicas"] = 2  # the second on port + 1; both behind Serve's proxy
    for deployment in app["deployments"]:
        deployment.update((deployments or {}).get(deployment["name"], {}))
    config_path = data_dir / "serve_config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    token_path = data_dir / "tokens.json"
    token = tokens.create_token(token_path, "acme")
    other = tokens.create_token(token_path, "other")
    limited = tokens.create_token(token_path, "limited", rpm=30)  # burst of 5 (10 s of 30/min)

    # The service's settings come from this test's config alone: CUTOUT_* variables of the
    # calling shell (e.g. CUTOUT_DATA_DIR exported by `make serve`) must not leak in.
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CUTOUT_")},
        "RAY_USAGE_STATS_ENABLED": "0",
        "CUTOUT_RESULT_URL_TTL_S": str(TTL_S),
        # off unless a test turns it on: the other tests send one photo again and again, and
        # mean to exercise the pipeline each time (tests/integration/test_outputs_it.py turns it on)
        "CUTOUT_RESULT_CACHE_S": "0",
        "PYTHONPATH": str(ROOT),
        # The cluster's own token (Ray 2.60 token auth), shared by the head, `serve run` and
        # the separate driver of the handle test, like RAY_AUTH_TOKEN in a KubeRay pod.
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        # Ray's settings as `make serve` has them (serve.env), with this test's ports: the
        # ingress replica answers HTTP itself on `port` (direct ingress), Serve's proxy on proxy_port
        **ray_env(),
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 2),
        **(env_extra or {}),
    }
    ray_address = f"127.0.0.1:{ray_port}"
    log = open(data_dir / "serve-run.log", "wb")
    # --block keeps the head in this process group, so the fixture stops this cluster only.
    head = subprocess.Popen(
        [
            _ray_bin("ray"),
            "start",
            "--head",
            "--block",
            f"--port={ray_port}",
            "--num-cpus=2",
            *(["--include-dashboard=true", f"--dashboard-port={free_port()}"] if dashboard else ["--include-dashboard=false"]),
            f"--temp-dir={ray_tmp}",
            "--disable-usage-stats",
            *([f"--metrics-export-port={metrics_port}"] if metrics else []),
        ],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    proc = None
    try:
        _wait_for_port(ray_port, head)
        proc = subprocess.Popen(
            [_ray_bin("serve"), "run", str(config_path), "--address", ray_address],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if requests.get(url + "/healthz", timeout=5).status_code == 200:
                    ready = True
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        if not ready:
            log.flush()
            tail = (data_dir / "serve-run.log").read_text(errors="replace")[-4000:]
            pytest.fail(f"the Serve application did not become healthy in {START_TIMEOUT_S}s:\n{tail}")
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics" if metrics else ""
        proxy_url = f"http://127.0.0.1:{proxy_port}"
        yield Service(url, data_dir, ray_address, token, other, ray_tmp, env, limited, head.pid, metrics_url, proxy_url)
    finally:
        if proc is not None:
            _stop(proc, signal.SIGINT)
        _stop(head, signal.SIGTERM)
        log.close()


def _wait_for_port(port: int, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    pytest.fail(f"the Ray head did not start on port {port}")


def _stop(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
