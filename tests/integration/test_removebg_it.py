"""End to end: ``POST /v1.0/removebg`` with each body type, its headers and errors, and a
remove.bg client library from PyPI (``removebg``) pointed at the service by its endpoint alone."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import requests
from PIL import Image

from tests.integration.test_outputs_it import block_image

pytestmark = pytest.mark.integration


def url(service) -> str:
    return service.url + "/v1.0/removebg"


def check_image(resp: requests.Response, size=(64, 48)) -> Image.Image:
    assert resp.status_code == 200, resp.text
    im = Image.open(io.BytesIO(resp.content))
    assert im.size == size
    assert (resp.headers["X-Width"], resp.headers["X-Height"]) == tuple(str(s) for s in size)
    assert resp.headers["X-Type"] == "product"
    return im


def test_multipart_keeps_the_source_frame_and_says_where_the_product_is(service):
    png, _ = block_image(seed=40)
    resp = requests.post(
        url(service),
        files={"image_file": ("p.png", png)},
        data={"size": "auto"},
        headers={"X-Api-Key": service.token},
        timeout=120,
    )
    im = check_image(resp)
    assert resp.headers["content-type"] == "image/png" and im.mode == "RGBA"
    alpha = np.asarray(im.getchannel("A"))
    assert alpha[10:30, 20:50].min() == 255 and alpha.sum() == 255 * 30 * 20  # uncropped: the product where it was
    fg = [resp.headers[f"X-Foreground-{k}"] for k in ("Left", "Top", "Width", "Height")]
    assert fg == ["20", "10", "30", "20"]


def test_urlencoded_image_url_with_crop_margin_and_bg_color_gives_jpeg(service, image_server):
    png, _ = block_image(seed=41)
    image_server.files["/rbg-41.png"] = png
    data = {"image_url": image_server.url + "/rbg-41.png", "crop": "true", "crop_margin": "5px", "bg_color": "00ff00"}
    resp = requests.post(url(service), data=data, headers={"X-Api-Key": service.token}, timeout=120)
    im = check_image(resp, (40, 30))
    assert resp.headers["content-type"] == "image/jpeg" and im.format == "JPEG"  # format auto: opaque -> jpg
    assert all(abs(a - b) <= 12 for a, b in zip(im.getpixel((1, 1)), (0, 255, 0), strict=True))


def test_json_body_with_accept_json_answers_base64(service):
    png, _ = block_image(seed=42)
    body = {"image_file_b64": base64.b64encode(png).decode(), "channels": "alpha", "crop": True}
    resp = requests.post(url(service), json=body, headers={"X-Api-Key": service.token, "Accept": "application/json"}, timeout=120)
    assert resp.status_code == 200, resp.text
    data = resp.json()["data"]
    im = Image.open(io.BytesIO(base64.b64decode(data["result_b64"])))
    assert im.mode == "L" and im.size == (30, 20) and np.asarray(im).min() == 255
    assert (data["foreground_left"], data["foreground_top"], data["foreground_width"], data["foreground_height"]) == (
        0,
        0,
        30,
        20,
    )


def test_errors_in_remove_bg_shape(service):
    resp = requests.post(url(service), data={"image_url": "http://x.test/a.png"}, timeout=30)
    assert resp.status_code == 403 and resp.json()["errors"][0]["code"] == "unauthorized"
    resp = requests.post(
        url(service), data={"size": "huge", "image_file_b64": "aGk="}, headers={"X-Api-Key": service.token}, timeout=30
    )
    assert resp.status_code == 400
    (error,) = resp.json()["errors"]
    assert error["source"] == {"parameter": "size"} and error["title"]
    resp = requests.post(
        url(service), data={"image_url": "http://10.0.0.1/a.png"}, headers={"X-Api-Key": service.token}, timeout=30
    )
    assert resp.status_code == 400 and resp.json()["errors"][0]["code"] == "url_not_allowed"  # the same SSRF rules
    resp = requests.post(
        url(service), data={"format": "zip", "image_file_b64": "aGk="}, headers={"X-Api-Key": service.token}, timeout=30
    )
    assert resp.status_code == 400 and resp.json()["errors"][0]["source"] == {"parameter": "format"}


def test_rate_limit_answers_with_remove_bg_headers(service):
    statuses = []
    for _ in range(30):
        resp = requests.post(url(service), json={}, headers={"X-Api-Key": service.limited_token}, timeout=30)
        statuses.append(resp.status_code)
        if resp.status_code == 429:
            break
    assert statuses[-1] == 429, statuses
    assert resp.headers["X-RateLimit-Limit"] == "30" and resp.headers["X-RateLimit-Remaining"] == "0"
    assert int(resp.headers["X-RateLimit-Reset"]) > 0 and int(resp.headers["Retry-After"]) >= 1
    assert resp.json()["errors"][0]["code"] == "rate_limited"


def test_the_removebg_client_library_works_against_the_service(service, image_server, tmp_path, monkeypatch):
    import removebg.removebg as client

    monkeypatch.setattr(client, "API_ENDPOINT", url(service))  # the only change: where it sends requests
    png, _ = block_image(seed=43)
    source = tmp_path / "mug.png"
    source.write_bytes(png)
    rb = client.RemoveBg(service.token, str(tmp_path / "errors.log"))
    rb.remove_background_from_img_file(str(source))  # multipart
    image_server.files["/rbg-43.png"] = png
    rb.remove_background_from_img_url(image_server.url + "/rbg-43.png", new_file_name=str(tmp_path / "url.png"))
    rb.remove_background_from_base64_img(base64.b64encode(png).decode(), new_file_name=str(tmp_path / "b64.png"))
    for path in (tmp_path / "mug.png_no_bg.png", tmp_path / "url.png", tmp_path / "b64.png"):
        im = Image.open(path)
        assert im.mode == "RGBA" and im.size == (64, 48)
        assert np.asarray(im.getchannel("A")).sum() == 255 * 30 * 20
