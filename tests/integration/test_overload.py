"""Overload: more concurrent work than the graph takes is answered (200 or 503 JSON with
Retry-After), never a 500, and the service is healthy afterwards."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.images import b64, encode, product_photo

pytestmark = pytest.mark.integration


def test_flood_is_answered_with_200_or_503(service):
    body = {"file": b64(encode(product_photo(640, 480), "JPEG", quality=90))}
    with ThreadPoolExecutor(max_workers=32) as pool:
        responses = list(pool.map(lambda _: service.post(body, token=service.other_token), range(40)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 1
    for r in responses:
        if r.status_code == 503:
            assert r.headers.get("Retry-After") and r.json()["error"]["reason"] in ("overloaded", "unavailable")
    assert requests.get(service.url + "/healthz", timeout=10).status_code == 200
