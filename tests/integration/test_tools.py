"""The integrators' tools against the running service: the OpenAPI document it serves, every
answer checked against that document by schemathesis, the client's retries at the rate limit,
and ``cutout remove`` end to end (resumed by a second run)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import hypothesis
import hypothesis.errors
import pytest
import requests
import schemathesis
from openapi_spec_validator import validate
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from pipeline import tokens
from pipeline.client import AsyncCutoutClient, RetryPolicy
from pipeline.openapi import document
from tests.harness import ROOT
from tests.images import encode, product_photo

pytestmark = pytest.mark.integration
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def test_the_served_document_is_valid_and_the_one_the_code_generates(service):
    response = requests.get(service.url + "/openapi.json", timeout=30)
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
    validate(response.json())
    assert response.json() == json.loads(json.dumps(document()))
    docs = requests.get(service.url + "/docs", timeout=30)
    assert (
        docs.status_code == 200 and "/ui/docs.js" in docs.text and "script-src 'self'" in docs.headers["content-security-policy"]
    )


def test_every_answer_to_generated_requests_matches_the_schema_and_none_is_a_500(service):
    """Schemathesis generates valid and invalid requests for every operation of the served
    document (a dozen each, the same ones on every run), the remove.bg endpoint's three body
    types included, and checks each answer: no 5xx other than a documented 503, a documented
    status, content type, headers and body. Generated ``image_url`` values that name a host get
    400 ``url_not_allowed`` or 460 by design: the service does not fetch from addresses that
    are not public."""
    token = tokens.create_token(service.data_dir / "tokens.json", "fuzz")  # its own rate limit
    schema = schemathesis.openapi.from_url(service.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]  # all but the document itself
    assert {op.label for op in operations} >= {
        "POST /product/cutout",
        "POST /v1.0/removebg",
        "GET /results/{org}/{year}/{month}/{day}/{name}",
        "GET /results/{org}/cache/{name}",
        "GET /healthz",
        "GET /",
        "GET /docs",
    }
    credentials = {"api_token": token, "X-Api-Key": token}  # each operation's own scheme (the other header is ignored)
    answered: dict[str, set] = {op.label: set() for op in operations}
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @hypothesis.settings(
                max_examples=12,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(hypothesis.HealthCheck),
                phases=[hypothesis.Phase.generate],
            )
            @hypothesis.given(operation.as_strategy(generation_mode=mode, headers=credentials))
            def check(case):
                response = case.call_and_validate(base_url=service.url, checks=CHECKS, timeout=60)
                answered[case.operation.label].add((case.media_type, response.status_code))

            try:
                check()
            except hypothesis.errors.Unsatisfiable:
                assert mode is schemathesis.GenerationMode.NEGATIVE  # an operation with no input to make invalid
    assert all(answered.values()), answered  # every operation was called
    # the key was taken and each of the remove.bg endpoint's body types read (and refused: fuzz is no image)
    refused = {media for media, status in answered["POST /v1.0/removebg"] if status == 400}
    assert refused == {"multipart/form-data", "application/x-www-form-urlencoded", "application/json"}, answered


def test_the_client_held_at_the_rate_limit_waits_out_every_retry_after_and_gets_200s(service):
    """Four clients send three cutouts each, at once, as an organization limited to 30 a minute
    (a burst of 5): they are refused with 429 until the limiter has room, and every request ends
    200, each having waited at least the sum of the Retry-After values it was given."""
    token = tokens.create_token(service.data_dir / "tokens.json", "patient", rpm=30)
    photo = encode(product_photo(96, 72), "PNG")
    retry = RetryPolicy(max_attempts=40, max_wait_s=60, jitter_s=0.5)

    async def client_sending_three() -> list[tuple[object, float, list[float]]]:
        done = []
        for _ in range(3):
            events = []
            async with AsyncCutoutClient(service.url, token, retry=retry, on_retry=events.append) as client:
                started = time.monotonic()
                result = await client.cutout(file=photo)
                done.append((result, time.monotonic() - started, [e.retry_after for e in events]))
        return done

    async def all_clients():
        return [r for rs in await asyncio.gather(*(client_sending_three() for _ in range(4))) for r in rs]

    results = asyncio.run(all_clients())
    assert len(results) == 12
    assert all(result.crop.width > 0 for result, _, _ in results)  # a typed 200 each
    retried = [(waited, ras) for _, waited, ras in results if ras]
    assert len(retried) >= 5, "the limit was never reached: the test proves nothing"
    for waited, retry_afters in retried:
        assert None not in retry_afters  # every refusal said when to come back
        assert waited >= sum(retry_afters), (waited, retry_afters)


def test_cutout_remove_a_folder_and_a_csv_then_resume(service, image_server, tmp_path):
    shots = tmp_path / "shots"
    shots.mkdir()
    (shots / "mug.jpg").write_bytes(encode(product_photo(160, 120), "JPEG"))
    (shots / "bowl.png").write_bytes(encode(product_photo(120, 160), "PNG"))
    (tmp_path / "anim.webp").write_bytes(encode(product_photo(64, 48), "GIF"))  # a GIF by its bytes: 415
    image_server.files["/catalog/vase.webp"] = encode(product_photo(200, 100), "WEBP")
    catalog = tmp_path / "catalog.csv"
    catalog.write_text(f"sku,image_url\nVASE-9,{image_server.url}/catalog/vase.webp\n")
    out = tmp_path / "out"
    env = {**os.environ, "CUTOUT_URL": service.url, "CUTOUT_TOKEN": service.token, "PYTHONPATH": str(ROOT)}

    def remove(*inputs: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "pipeline.cli", "remove", *inputs, "-o", str(out), "-j", "3", "--no-progress"]
        return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)

    first = remove(str(shots), str(catalog), str(tmp_path / "anim.webp"))
    assert first.returncode == 1, first.stderr  # one input failed
    assert "3 cut out, 0 already done, 1 failed" in first.stdout
    assert "anim.webp: 415 unsupported_format: The image must be JPEG, PNG or WebP." in first.stderr
    entries = {e["key"]: e for e in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert len(entries) == 4
    for name in ("mug.png", "bowl.png", "VASE-9.png"):
        entry = next(e for e in entries.values() if e.get("file") == name)
        with Image.open(out / name) as im:  # the PNG has the size the API reported
            assert im.mode == "RGBA" and im.size == (entry["crop"]["width"], entry["crop"]["height"])
    assert next(e for e in entries.values() if e["sku"] == "VASE-9")["source"] == {"width": 200, "height": 100}
    assert not list(out.glob(".*part"))
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}

    second = remove(str(shots), str(catalog))  # the failed input dropped: nothing left to do
    assert second.returncode == 0, second.stderr
    assert "0 cut out, 3 already done, 0 failed" in second.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")} == stamps
