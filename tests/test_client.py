"""The client against a scripted HTTP server on loopback: typed results and errors, and retries
of 429/503 that wait at least ``Retry-After`` (plus jitter, within a cap) and no others."""

from __future__ import annotations

import asyncio
import email.utils
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.client import (
    AsyncCutoutClient,
    CutoutAPIError,
    CutoutClient,
    RetryPolicy,
    ServiceUnreachable,
    parse_retry_after,
)
from tests.harness import free_port

OK = {
    "result_url": "http://x/r.png",
    "sku": "A",
    "crop": {"left": 1, "top": 2, "width": 3, "height": 4},
    "source": {"width": 9, "height": 9},
}


def error(status: int, reason: str, message: str = "m") -> dict:
    return {"error": {"code": status, "reason": reason, "message": message, "parameter": None, "details": {}}}


@pytest.fixture
def scripted() -> Iterator[ThreadingHTTPServer]:
    """Answers each request with the next (status, headers, body) of ``server.script``; records requests."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):  # noqa: N802
            length = int(self.headers.get("content-length", 0))
            self.server.requests.append((self.path, dict(self.headers), self.rfile.read(length)))
            status, headers, body = self.server.script.pop(0)
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_POST  # noqa: N815

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.script, server.requests = [], []
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


FAST = RetryPolicy(max_attempts=4, jitter_s=0.05, backoff_s=0.01)


def test_retry_after_seconds_and_http_dates():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(email.utils.formatdate(1000.0 + 30, usegmt=True), now=1000.0) == 30.0
    assert parse_retry_after(email.utils.formatdate(900.0, usegmt=True), now=1000.0) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


@pytest.mark.parametrize("retry_after", [0.0, 1.0, 7.0, 60.0])
def test_waits_are_retry_after_plus_jitter_never_less(retry_after):
    policy = RetryPolicy(max_attempts=5, max_wait_s=60, jitter_s=2.0)
    err = CutoutAPIError(429, "rate_limited", "m", retry_after=retry_after)
    waits = [policy.delay(1, err) for _ in range(200)]
    assert all(retry_after <= w <= retry_after + 2.0 for w in waits)
    assert len({round(w, 6) for w in waits}) > 100  # jittered, not in step


def test_no_retry_past_the_cap_the_attempts_or_for_other_statuses():
    policy = RetryPolicy(max_attempts=3, max_wait_s=30)
    assert policy.delay(1, CutoutAPIError(503, "overloaded", "m", retry_after=31)) is None  # longer than the cap
    assert policy.delay(3, CutoutAPIError(503, "overloaded", "m", retry_after=1)) is None  # attempts spent
    for status in (400, 401, 415, 422, 460, 500, 502):
        assert policy.delay(1, CutoutAPIError(status, "x", "m")) is None
    # no Retry-After (a proxy's 503, a refused connection): exponential backoff, capped
    assert all(0.5 <= policy.delay(1, ServiceUnreachable("x")) <= 1.0 for _ in range(50))
    assert RetryPolicy(max_attempts=20, max_wait_s=30).delay(15, ServiceUnreachable("x")) <= 30


def test_sync_client_retries_429_and_503_then_returns_the_typed_result(scripted):
    scripted.script = [
        (429, {"Retry-After": "0"}, error(429, "rate_limited")),
        (503, {"Retry-After": "0"}, error(503, "overloaded")),
        (200, {}, OK),
    ]
    events = []
    with CutoutClient(scripted.url, "tok", retry=FAST, on_retry=events.append) as client:
        result = client.cutout(file=b"\x89PNG", sku="A", force_rmbg=True)
    assert result.crop.width == 3 and result.source.height == 9 and result.sku == "A"
    assert [e.error.status for e in events] == [429, 503] and [e.retry_after for e in events] == [0.0, 0.0]
    path, headers, body = scripted.requests[0]
    assert path == "/product/cutout" and headers["api_token"] == "tok"
    assert json.loads(body) == {
        "file": "iVBORw==",
        "sku": "A",
        "force_rmbg": True,
        "preserve_alpha": False,
        "content_moderation": False,
    }


def test_errors_are_typed_and_not_retried(scripted):
    scripted.script = [
        (
            415,
            {"X-Request-Id": "r1"},
            {
                "error": {
                    **error(415, "unsupported_format", "The image must be JPEG, PNG or WebP.")["error"],
                    "parameter": "file",
                    "details": {"detected": "GIF"},
                }
            },
        )
    ]
    with CutoutClient(scripted.url, "tok", retry=FAST) as client, pytest.raises(CutoutAPIError) as info:
        client.cutout(file=b"GIF89a")
    e = info.value
    assert (e.status, e.reason, e.message, e.parameter, e.details, e.request_id) == (
        415,
        "unsupported_format",
        "The image must be JPEG, PNG or WebP.",
        "file",
        {"detected": "GIF"},
        "r1",
    )
    assert len(scripted.requests) == 1


def test_a_retry_after_over_the_cap_is_raised_at_once(scripted):
    scripted.script = [(429, {"Retry-After": "3600"}, error(429, "rate_limited"))]
    with CutoutClient(scripted.url, "tok", retry=RetryPolicy(max_wait_s=60)) as client, pytest.raises(CutoutAPIError) as info:
        client.cutout(image_url="https://example.com/a.jpg")
    assert info.value.retry_after == 3600 and len(scripted.requests) == 1


def test_an_answer_that_is_not_the_services_json_is_still_a_typed_error(scripted):
    scripted.script = [(502, {"Content-Type": "text/html"}, b"<h1>Bad Gateway</h1>")]
    with CutoutClient(scripted.url, "tok", retry=FAST) as client, pytest.raises(CutoutAPIError) as info:
        client.cutout(file=b"x")
    assert (info.value.status, info.value.reason) == (502, "http_error") and "Bad Gateway" in info.value.message


def test_async_client_waits_at_least_retry_after(scripted):
    scripted.script = [(429, {"Retry-After": "1"}, error(429, "rate_limited")), (200, {}, OK)]
    events = []

    async def go():
        async with AsyncCutoutClient(scripted.url, "tok", retry=FAST, on_retry=events.append) as client:
            started = time.monotonic()
            result = await client.cutout(file=b"x")
            return result, time.monotonic() - started

    result, elapsed = asyncio.run(go())
    assert result.result_url == "http://x/r.png"
    assert [e.retry_after for e in events] == [1.0] and 1.0 <= events[0].wait_s <= 1.05
    assert elapsed >= 1.0  # the relation the policy promises, not a timing budget


def test_no_service_is_service_unreachable_after_the_retries():
    events = []
    client = CutoutClient(f"http://127.0.0.1:{free_port()}", "tok", retry=FAST, on_retry=events.append)
    with client, pytest.raises(ServiceUnreachable):
        client.cutout(file=b"x")
    assert len(events) == FAST.max_attempts - 1
