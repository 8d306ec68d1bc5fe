"""Rate limits through the running application, with two ingress replicas sharing one limiter
(through Serve's proxy, which spreads the requests over both)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.images import b64, encode, rgba_with_alpha

pytestmark = pytest.mark.integration


def test_burst_over_the_limit_gets_429_while_another_org_is_served(service):
    body = {"file": "bm90IGFuIGltYWdl"}  # cheap requests: "not an image" -> 415 once admitted

    real = {"file": b64(encode(rgba_with_alpha()[0], "PNG"))}

    def call(token):
        return service.post(body if token == service.limited_token else real, token=token, via_proxy=True)

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(call, service.limited_token) for _ in range(12)]
        others = [pool.submit(call, service.token) for _ in range(3)]
        burst = [f.result() for f in futures]
        others = [f.result() for f in others]
    statuses = [r.status_code for r in burst]
    admitted = statuses.count(415)
    limited = [r for r in burst if r.status_code == 429]
    # burst of 5 (30/min over 10 s) plus at most a token or two refilled during the burst;
    # two replicas each guessing alone would have let about 10 through
    assert 5 <= admitted <= 7, statuses
    assert len(limited) == 12 - admitted, statuses
    for r in limited:
        assert int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["reason"] == "rate_limited"
    assert [r.status_code for r in others] == [200, 200, 200]  # the other organization is served meanwhile
