"""The load real clients send, through the running application with its shipped admission
settings (statuses only; the timings are measured by benchmarks/load.py)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from pipeline import tokens
from tests.images import b64, encode, product_photo

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def photo():
    return {"file": b64(encode(product_photo(320, 240), "JPEG", quality=85))}


def _closed_loop(service, token: str, body: dict, clients: int, per_client: int) -> list:
    def loop(_):
        return [service.post(body, token=token) for _ in range(per_client)]

    with ThreadPoolExecutor(max_workers=clients) as pool:
        return [r for answers in pool.map(loop, range(clients)) for r in answers]


def test_eight_clients_sending_back_to_back_are_queued_not_refused(service, photo):
    org_token = tokens.create_token(service.data_dir / "tokens.json", "eight-clients")
    answers = _closed_loop(service, org_token, photo, clients=8, per_client=3)
    assert [r.status_code for r in answers] == [200] * 24


def test_an_organization_over_its_limit_learns_it_with_429_while_another_is_served(service, photo):
    limited = tokens.create_token(service.data_dir / "tokens.json", "forty-rpm", rpm=40)
    with ThreadPoolExecutor(max_workers=9) as pool:
        burst = [pool.submit(service.post, photo, limited) for _ in range(60)]
        polite = []
        for _ in range(5):
            polite.append(service.post(photo, token=service.other_token))
        burst = [f.result() for f in burst]
    statuses = [r.status_code for r in burst]
    assert 503 not in statuses, statuses
    refused = [r for r in burst if r.status_code == 429]
    assert len(refused) >= 30, statuses
    assert set(statuses) <= {200, 429}, statuses
    for r in refused:
        assert int(r.headers["Retry-After"]) >= 1 and r.json()["error"]["reason"] == "rate_limited"
    assert [r.status_code for r in polite] == [200] * 5


def test_clients_retrying_at_once_get_only_200_429_or_503_with_retry_after(service, photo):
    org_token = tokens.create_token(service.data_dir / "tokens.json", "impatient")
    deadline = time.monotonic() + 20

    def impatient(_):
        answers = []
        while time.monotonic() < deadline:
            answers.append(service.post(photo, token=org_token))
        return answers

    with ThreadPoolExecutor(max_workers=24) as pool:
        answers = [r for batch in pool.map(impatient, range(24)) for r in batch]
    statuses = [r.status_code for r in answers]
    assert set(statuses) <= {200, 429, 503}, sorted(set(statuses))
    assert statuses.count(200) >= 1
    for r in answers:
        if r.status_code != 200:
            assert int(r.headers["Retry-After"]) >= 1
            assert r.json()["error"]["reason"] in ("overloaded", "rate_limited")
    assert service.post(photo, token=service.other_token).status_code == 200  # the service is still there
