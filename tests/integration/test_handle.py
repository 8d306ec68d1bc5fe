"""In-cluster callers: a separate Ray driver process calls the app handle's ``cutout``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import requests

from tests.images import b64, encode, rgba_with_alpha

pytestmark = pytest.mark.integration

DRIVER = r"""
import json, sys
import ray
from ray import serve
from pipeline.errors import CutoutError

address, payload = sys.argv[1], sys.stdin.read()
ray.init(address=address, logging_level="ERROR", log_to_driver=False)
handle = serve.get_app_handle("product_cutout")
ok = handle.cutout.remote(org="acme", sku="H-1", file=payload, preserve_alpha=True).result()
errors = []
for kwargs in ({"org": "acme", "file": "!!!"}, {"org": "acme"}, {"org": "../evil", "file": payload}):
    try:
        handle.cutout.remote(**kwargs).result()
        errors.append(None)
    except CutoutError as e:
        errors.append({"status": e.status, "reason": e.reason, "parameter": e.parameter, "body": e.to_body()})
limited = []  # the organization "limited" is at 30 a minute (burst 5): the same limit as over HTTP
for _ in range(8):
    try:
        handle.cutout.remote(org="limited", file="!!!").result()
        limited.append(None)
    except CutoutError as e:
        limited.append({"status": e.status, "reason": e.reason, "retry_after": e.retry_after})
print("RESULT " + json.dumps({"ok": ok, "errors": errors, "limited": limited}))
"""


def test_handle_cutout_from_a_separate_driver(service):
    im, _ = rgba_with_alpha()
    http = service.post({"file": b64(encode(im, "PNG")), "preserve_alpha": True, "sku": "H-1"}).json()
    out = subprocess.run(
        [sys.executable, "-c", DRIVER, service.ray_address],
        input=b64(encode(im, "PNG")),
        capture_output=True,
        text=True,
        env=service.env,
        timeout=180,
    )
    line = next((row for row in out.stdout.splitlines() if row.startswith("RESULT ")), None)
    assert line, out.stdout[-2000:] + out.stderr[-3000:]
    result = json.loads(line[len("RESULT ") :])
    ok = result["ok"]
    assert set(ok) == set(http) and ok["crop"] == http["crop"] and ok["source"] == http["source"] and ok["sku"] == "H-1"
    assert "/results/acme/" in ok["result_url"]
    assert requests.get(ok["result_url"], timeout=10).status_code == 200
    bad_b64, missing, bad_org = result["errors"]
    assert (bad_b64["status"], bad_b64["reason"], bad_b64["parameter"]) == (400, "invalid_base64", "file")
    assert (missing["status"], missing["reason"]) == (400, "missing_image")
    assert (bad_org["status"], bad_org["parameter"]) == (400, "org")
    assert bad_b64["body"]["error"]["code"] == 400
    limited = result["limited"]
    assert {e["status"] for e in limited} <= {400, 429}, limited  # 400: admitted, then the bad base64
    refused = [e for e in limited if e["status"] == 429]
    assert len(refused) >= 3 and all(e["reason"] == "rate_limited" and e["retry_after"] >= 1 for e in refused), limited
