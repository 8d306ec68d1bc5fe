"""An ingress replica killed with requests in flight: Serve's proxy answers them 503, not 500.

The real application on loopback (two ingress replicas behind Serve's proxy, as the session's
service runs it). Requests wait in the fetch stage on an image server that holds its answer;
both ingress replicas are killed with ``kill -9``; every request that was in flight gets the
API's 503 with ``Retry-After`` (``deployments/proxy.py``), nothing is stored for them, and the
service answers again on both its ports.
"""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psutil
import requests
from PIL import Image

IN_FLIGHT = 4
RECOVERY_S = 60


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, "JPEG")
    return buf.getvalue()


class _HeldImageServer:
    """Serves one JPEG, but only once :meth:`release` is called; counts the requests that wait."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.waiting = 0
        self._lock = threading.Lock()
        body = _jpeg()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802
                with outer._lock:
                    outer.waiting += 1
                outer.released.wait(RECOVERY_S)
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/held.jpg"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.release()
        self.httpd.shutdown()


def _listeners(ports: set[int]) -> set[int]:
    """The pids listening on ``ports`` on loopback: the ingress replicas (direct ingress)."""
    return {
        c.pid
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port in ports and c.pid
    }


def _stored(service) -> set[str]:
    root = service.data_dir / "results"
    return {str(p) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


class _NewResults:
    """Every result file that appears after it starts, seen by polling (the test service deletes
    results a few seconds after their URLs expire, so a final listing could miss one)."""

    def __init__(self, service) -> None:
        self.service, self.before, self.seen = service, _stored(service), set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.25):
            self.seen |= _stored(self.service) - self.before

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _healthy(url: str) -> bool:
    try:
        return requests.get(url + "/healthz", timeout=5).status_code == 200
    except requests.RequestException:
        return False


def test_requests_in_flight_on_a_killed_ingress_replica_get_503_with_retry_after(service):
    direct_port = int(service.url.rsplit(":", 1)[1])
    ports = {direct_port, direct_port + 1}  # the two ingress replicas' own HTTP servers
    victims = _listeners(ports)
    assert len(victims) == 2, f"expected two ingress replicas listening on {sorted(ports)}, found pids {victims}"
    watch = _NewResults(service)
    held = _HeldImageServer()
    try:
        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            futures = [
                pool.submit(service.post, {"image_url": held.url, "sku": f"lost-{i}"}, via_proxy=True) for i in range(IN_FLIGHT)
            ]
            # a pipeline slot per replica: one request or two wait in the fetch stage, the others
            # in the replicas' admission queues; all of them are in flight on the replicas
            deadline = time.monotonic() + 30
            while held.waiting < 1 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert held.waiting >= 1, "no request reached the fetch stage"
            time.sleep(1.0)
            for pid in victims:
                os.kill(pid, signal.SIGKILL)
            answers = [f.result(timeout=RECOVERY_S) for f in futures]
        held.release()
        reasons = []
        for r in answers:
            assert r.status_code == 503, (r.status_code, r.headers, r.text[:300])
            assert r.headers["Content-Type"].startswith("application/json")
            assert int(r.headers["Retry-After"]) >= 1
            error = r.json()["error"]
            assert error["code"] == 503
            reasons.append(error["reason"])
        # lost with its replica; or refused by admission before the kill (a queue full of held requests)
        assert set(reasons) <= {"unavailable", "overloaded"} and "unavailable" in reasons, reasons
        # back on both paths within the bound, and nothing stored for the lost requests
        deadline = time.monotonic() + RECOVERY_S
        while time.monotonic() < deadline and not (
            _healthy(service.url) and _healthy(service.proxy_url) and len(_listeners(ports)) == 2
        ):
            time.sleep(1)
        assert _healthy(service.url) and _healthy(service.proxy_url), f"not healthy again within {RECOVERY_S} s"
        assert len(_listeners(ports)) == 2, "both ingress replicas were not replaced"
        time.sleep(3)  # the released fetches have long reached the uploader by now
        assert not watch.seen, f"results stored for requests lost with their replica: {sorted(watch.seen)}"
    finally:
        watch.stop()
        held.close()


def test_the_proxy_passes_the_applications_own_errors_through_unchanged(service):
    """The middleware only fills in for a missing response: a 401 stays the application's 401."""
    r = service.post({"image_url": "http://127.0.0.1:9/x.jpg"}, token="not-a-token", via_proxy=True)
    assert r.status_code == 401
    assert r.json()["error"]["reason"] == "unauthorized"
    assert "Retry-After" not in r.headers
