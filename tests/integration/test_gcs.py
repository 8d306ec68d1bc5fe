"""The running application with results in GCS (a real gcp-storage-emulator on loopback).

A second cluster runs the same application with CUTOUT_STORAGE_URI=gs://... and
STORAGE_EMULATOR_HOST set; URLs are signed with a locally generated service-account key
(GOOGLE_APPLICATION_CREDENTIALS) and verified here, since the emulator checks no signatures.
"""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import requests
from PIL import Image

from tests.harness import running_service
from tests.images import b64, encode, rgba_with_alpha
from tests.test_storage_backends import key_file, rsa_key, verify_v4  # noqa: F401  (fixtures)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gcs_service(gcs_emulator, key_file):  # noqa: F811
    env = {
        "CUTOUT_STORAGE_URI": f"gs://{gcs_emulator.bucket}/cutouts",
        "CUTOUT_GCS_TIMEOUT_S": "1",
        "CUTOUT_GCS_DEADLINE_S": "3",
        "STORAGE_EMULATOR_HOST": gcs_emulator.host,
        "GOOGLE_APPLICATION_CREDENTIALS": str(key_file),
    }
    with running_service(env_extra=env) as svc:
        yield svc


def test_post_stores_in_gcs_with_a_verified_signed_url(gcs_service, gcs_emulator, rsa_key, service):  # noqa: F811
    im, alpha = rgba_with_alpha()
    body = {"file": b64(encode(im, "PNG")), "preserve_alpha": True, "sku": "G-1"}
    resp = gcs_service.post(body)
    assert resp.status_code == 200, resp.text
    url = resp.json()["result_url"]
    assert url.startswith(f"{gcs_emulator.host}/{gcs_emulator.bucket}/cutouts/acme/")
    params = verify_v4(url, rsa_key.public_key(), now=time.time())
    assert params["X-Goog-Expires"] == "12"  # CUTOUT_RESULT_URL_TTL_S of the test cluster
    with pytest.raises(PermissionError):
        verify_v4(url, rsa_key.public_key(), now=time.time() + 13)
    png = requests.get(url, timeout=10).content
    # the same PNG the local backend produces for the same request
    local = service.post(body).json()["result_url"]
    assert png == requests.get(local, timeout=10).content
    out = np.asarray(Image.open(io.BytesIO(png)).getchannel("A"))
    c = resp.json()["crop"]
    assert np.array_equal(out, alpha[c["top"] : c["top"] + c["height"], c["left"] : c["left"] + c["width"]])
    name = url.split(f"/{gcs_emulator.bucket}/")[1].split("?")[0]
    blob = gcs_emulator.client().bucket(gcs_emulator.bucket).get_blob(name)
    assert blob.metadata["sku"] == "G-1" and blob.metadata["model"] == "u2netp" and blob.metadata["request_id"]
    assert blob.cache_control == "private, max-age=12"  # caches keep it no longer than the URL lives


def test_emulator_outage_gives_503_then_recovers(gcs_service, gcs_emulator):
    im, _ = rgba_with_alpha()
    body = {"file": b64(encode(im, "PNG"))}
    blobs = lambda: {b.name for b in gcs_emulator.client().list_blobs(gcs_emulator.bucket, prefix="cutouts/")}  # noqa: E731
    before = blobs()
    gcs_emulator.stop()
    try:
        started = time.monotonic()
        resp = gcs_service.post(body)
        elapsed = time.monotonic() - started
        assert resp.status_code == 503 and resp.headers["Retry-After"], resp.text
        assert resp.json()["error"]["reason"] == "unavailable"
        assert elapsed < 3 + 4, elapsed  # CUTOUT_GCS_DEADLINE_S plus one request timeout and overhead
    finally:
        gcs_emulator.start()
    assert blobs() == before  # nothing partial
    assert gcs_service.post(body).status_code == 200  # resumes by itself
