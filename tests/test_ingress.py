"""Ingress logic without a cluster: health aggregation and the mapping of stage failures.

The deployment handles are stand-ins here (a plain object with ``ready.remote()``); the real
graph is exercised by tests/integration.
"""

from __future__ import annotations

import asyncio
import json

import ray.exceptions
from ray.serve.exceptions import BackPressureError

from deployments.errors import to_cutout_error
from deployments.ingress import Ingress
from pipeline.errors import CutoutError, bad_request
from pipeline.settings import load_settings


class _Method:
    def __init__(self, result):
        self.result = result

    def remote(self):
        async def go():
            if isinstance(self.result, BaseException):
                raise self.result
            if self.result == "hang":
                await asyncio.sleep(60)
            return self.result

        return go()


class FakeHandle:
    def __init__(self, ready):
        self.ready = _Method(ready)


def make_ingress(tmp_path, **ready):
    cls = Ingress.func_or_class
    settings = load_settings({"data_dir": str(tmp_path)}, environ={})
    handles = [FakeHandle(ready.get(name, True)) for name in ("fetcher", "segmenter", "moderator", "uploader", "rate_limiter")]
    return cls(settings, *handles)


def test_health_is_200_only_when_every_stage_is_ready(tmp_path):
    ok = asyncio.run(make_ingress(tmp_path)._health())
    assert ok.status_code == 200
    down = asyncio.run(make_ingress(tmp_path, segmenter=RuntimeError("starting"), moderator="hang")._health())
    assert down.status_code == 503 and down.headers["retry-after"]
    body = json.loads(down.body)
    assert body["stages"] == {
        "fetcher": "ready", "segmenter": "unavailable", "moderator": "unavailable", "uploader": "ready", "rate_limiter": "ready",
    }


def test_stage_failures_map_to_typed_errors():
    original = bad_request("invalid_base64", "bad", "file")
    wrapped = ray.exceptions.RayTaskError("fn", "tb", original)
    err = to_cutout_error(wrapped, "r1")
    assert isinstance(err, CutoutError) and (err.status, err.reason, err.parameter) == (400, "invalid_base64", "file")
    busy = to_cutout_error(BackPressureError(num_queued_requests=5, max_queued_requests=5), "r2")
    assert busy.status == 503 and busy.retry_after
    bug = to_cutout_error(ZeroDivisionError("secret detail"), "r3")
    assert bug.status == 500 and "secret" not in json.dumps(bug.to_body())


def test_at_capacity_the_answer_is_503_before_the_body_is_read(tmp_path):
    from starlette.requests import Request

    from pipeline import tokens

    settings = load_settings({"data_dir": str(tmp_path), "ingress_max_inflight": 1}, environ={})
    token = tokens.create_token(settings.tokens_file, "acme")
    handles = [FakeHandle(True) for _ in range(5)]
    ingress = Ingress.func_or_class(settings, *handles)
    body_read = []

    async def receive():
        body_read.append(True)
        return {"type": "http.request", "body": b"{}", "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/product/cutout", "query_string": b"", "headers": [(b"api_token", token.encode())]}

    async def go():
        with ingress._admit():  # one request already in the pipeline
            return await ingress(Request(scope, receive))

    response = asyncio.run(go())
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert json.loads(response.body)["error"]["reason"] == "overloaded"
    assert not body_read
    assert ingress._inflight == 0  # the refused request left the count as it was
