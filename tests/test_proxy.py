"""The proxy middleware (deployments/proxy.py) as Serve's proxy runs it: a plain ASGI wrapper.

The wrapped apps below behave as Serve's proxy does: one answers, one ends a request without
starting a response (what it does when the replica holding the request dies), one raises. The
test of the real thing, with replicas killed under a running service, is
tests/integration/test_lost_replica.py.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from deployments import proxy

ROOT = Path(__file__).resolve().parents[1]


def _call(app, path: str = "/product/cutout", headers: list | None = None) -> list[dict]:
    sent: list[dict] = []
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers or []}

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(proxy.LostReplicaAs503(app)(scope, receive, send))
    return sent


async def _silent(scope, receive, send):
    """Serve's proxy after the replica died: no response started."""


async def _raises(scope, receive, send):
    raise RuntimeError("the proxy failed")


async def _answers(scope, receive, send):
    await send({"type": "http.response.start", "status": 401, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"error": {}}'})


def _reply(sent: list[dict]) -> tuple[int, dict[bytes, bytes], dict]:
    start, body = sent
    return start["status"], dict(start["headers"]), json.loads(body["body"])


def test_a_request_the_proxy_ends_without_an_answer_gets_the_apis_503():
    status, headers, body = _reply(_call(_silent, headers=[(b"x-request-id", b"abc-123")]))
    assert status == 503
    assert headers[b"retry-after"] == b"1"
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"x-request-id"] == b"abc-123"
    assert body["error"]["code"] == 503 and body["error"]["reason"] == "unavailable"


def test_on_the_remove_bg_route_the_503_has_remove_bgs_error_shape():
    status, headers, body = _reply(_call(_silent, path="/v1.0/removebg"))
    assert status == 503 and headers[b"retry-after"] == b"1"
    assert body["errors"][0]["code"] == "unavailable"


def test_an_exception_in_the_proxy_before_any_answer_is_a_503_too():
    status, _, body = _reply(_call(_raises))
    assert status == 503 and body["error"]["reason"] == "unavailable"


def test_an_answer_the_application_gave_passes_unchanged():
    sent = _call(_answers)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 401


def test_serve_env_and_the_cluster_manifests_install_the_middleware():
    env = (ROOT / "serve.env").read_text()
    assert f"{proxy.ENV_VAR}={proxy.IMPORT_PATH}" in env.splitlines()
    for manifest in (ROOT / "cluster" / "rendered").glob("*.yaml"):
        assert f"name: {proxy.ENV_VAR}" in manifest.read_text(), manifest.name
    module, _, name = proxy.IMPORT_PATH.partition(":")
    assert module == proxy.__name__ and callable(getattr(proxy, name))
    assert [m.cls for m in proxy.middlewares()] == [proxy.EarlyAnswer, proxy.LostReplicaAs503]
