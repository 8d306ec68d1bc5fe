"""``quality``: ``best`` against ``fast`` on the running service, over HTTP and through the handle."""

from __future__ import annotations

import concurrent.futures
import io
import itertools
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import requests
from PIL import Image

from pipeline.evaluation.evalsets import composites
from tests.images import b64, encode

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("eval_dir")]


def full_frame_alpha(body: dict) -> np.ndarray:
    """The answer's alpha placed back into the input's frame."""
    resp = requests.get(body["result_url"], timeout=30)
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
    cut = np.asarray(Image.open(io.BytesIO(resp.content)).convert("RGBA"))[..., 3]
    crop, source = body["crop"], body["source"]
    alpha = np.zeros((source["height"], source["width"]), np.uint8)
    alpha[crop["top"] : crop["top"] + crop["height"], crop["left"] : crop["left"] + crop["width"]] = cut
    return alpha


def test_best_is_closer_to_the_true_alpha_than_fast_in_mixed_batches(service, eval_dir):
    # composites of real soft-edged cutouts over real backgrounds: the true alpha is known
    samples = list(itertools.islice(composites(eval_dir), 0, 28, 7))
    files = [b64(encode(Image.fromarray(s.rgb), "PNG")) for s in samples]
    jobs = [(k, q) for k in range(len(samples)) for q in ("fast", "best")]

    def post(job: tuple[int, str]) -> requests.Response:
        for _ in range(10):  # the test service admits few requests at once: wait as told
            resp = service.post({"file": files[job[0]], "quality": job[1]})
            if resp.status_code != 503:
                return resp
            time.sleep(float(resp.headers.get("retry-after", "1")))
        return resp

    # two at a time, each sample's fast and best together, so the segmenter's batches mix both
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(post, jobs))
    errors = {"fast": 0.0, "best": 0.0}
    for (k, quality), resp in zip(jobs, answers):
        assert resp.status_code == 200, resp.text
        alpha = full_frame_alpha(resp.json()).astype(np.float32)
        errors[quality] += float(np.abs(alpha - samples[k].gt).mean()) / 255
    assert errors["best"] < errors["fast"], errors  # a lower mean absolute error of the alpha


def test_an_unknown_quality_is_a_json_400_naming_the_field(service):
    resp = service.post({"file": "bm90IGFuIGltYWdl", "quality": "ultra"})
    assert resp.status_code == 400 and resp.headers["content-type"].startswith("application/json")
    err = resp.json()["error"]
    assert set(err) == {"code", "reason", "message", "parameter", "details"}
    assert (err["code"], err["reason"], err["parameter"]) == (400, "invalid_parameter", "quality")


DRIVER = r"""
import json, sys
import ray
from ray import serve
from pipeline.errors import CutoutError

address, payload = sys.argv[1], sys.stdin.read()
ray.init(address=address, logging_level="ERROR", log_to_driver=False)
handle = serve.get_app_handle("product_cutout")
ok = handle.cutout.remote(org="acme", file=payload, quality="best").result()
try:
    handle.cutout.remote(org="acme", file=payload, quality="slow").result()
    error = None
except CutoutError as e:
    error = e.to_body()
print("RESULT " + json.dumps({"ok": ok, "error": error}))
"""


def test_best_through_the_handle_matches_http(service, eval_dir):
    sample = next(composites(eval_dir))
    payload = b64(encode(Image.fromarray(sample.rgb), "PNG"))
    http = service.post({"file": payload, "quality": "best"})
    assert http.status_code == 200, http.text
    out = subprocess.run(
        [sys.executable, "-c", DRIVER, service.ray_address],
        input=payload,
        capture_output=True,
        text=True,
        env=service.env,
        timeout=180,
    )
    line = next((row for row in out.stdout.splitlines() if row.startswith("RESULT ")), None)
    assert line, out.stdout[-2000:] + out.stderr[-3000:]
    result = json.loads(line[len("RESULT ") :])
    assert result["ok"]["crop"] == http.json()["crop"]
    assert np.array_equal(full_frame_alpha(result["ok"]), full_frame_alpha(http.json()))
    assert result["error"]["error"]["parameter"] == "quality" and result["error"]["error"]["code"] == 400
