"""End to end: the output options of docs/api.md on real requests, checked on the pixels, and
the result cache (``X-Cache``) through the running application."""

from __future__ import annotations

import concurrent.futures
import io

import numpy as np
import pytest
import requests
from PIL import Image

from pipeline import imageio
from tests.harness import CACHE_S, running_service
from tests.images import b64, encode

pytestmark = pytest.mark.integration

RED = (200, 30, 40)


def block_image(width: int = 64, height: int = 48, box=(20, 10, 30, 20), seed: int = 0) -> tuple[bytes, np.ndarray]:
    """A PNG whose alpha is one opaque block (the product) on transparency, and the tight RGBA
    cutout the service makes of it (input alpha kept, no model: the pixels are exact)."""
    left, top, w, h = box
    rgba = np.zeros((height, width, 4), np.uint8)
    rgba[top : top + h, left : left + w] = (*RED, 255)
    rgba[top, left, 0] = seed % 256  # a different image per test, so the result cache stays out of the way
    return encode(Image.fromarray(rgba, "RGBA"), "PNG"), rgba[top : top + h, left : left + w]


def fetch(url: str, content_type: str = "image/png") -> tuple[Image.Image, bytes]:
    resp = requests.get(url, timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == content_type
    im = Image.open(io.BytesIO(resp.content))
    im.load()
    return im, resp.content


def cutout(service, seed: int, token: str = "default", **options) -> requests.Response:
    png, _ = block_image(seed=seed)
    return service.post({"file": b64(png), **options}, token=token)


def test_without_options_the_answer_is_todays_byte_for_byte(service):
    png, tight = block_image(seed=1)
    resp = service.post({"sku": "S-1", "file": b64(png)})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert list(body) == ["result_url", "sku", "crop", "source"]  # no placement without options
    assert "X-Cache" not in resp.headers  # the result cache is off in this instance
    assert body["crop"] == {"left": 20, "top": 10, "width": 30, "height": 20}
    _, data = fetch(body["result_url"])
    assert data == imageio.encode_png(tight, 2)  # the tight RGBA PNG, exactly as before


def test_crop_margin_in_pixels_and_percent(service):
    body = cutout(service, 2, crop_margin="12px").json()
    im, _ = fetch(body["result_url"])
    assert im.size == (30 + 24, 20 + 24)
    alpha = np.asarray(im.getchannel("A"))
    assert alpha[12:32, 12:42].min() == 255 and alpha.sum() == 255 * 30 * 20  # margin is transparent
    assert body["placement"]["left"] == 12 and body["placement"]["top"] == 12
    assert body["crop"] == {"left": 20, "top": 10, "width": 30, "height": 20}  # still the box in the source
    im, _ = fetch(cutout(service, 3, crop_margin="10%").json()["result_url"])
    assert im.size == (30 + 2 * 3, 20 + 2 * 2)


def test_canvas_size_and_position(service):
    body = cutout(service, 4, canvas={"width": 200, "height": 100, "position": "bottom", "padding": 10}).json()
    im, _ = fetch(body["result_url"])
    assert im.size == (200, 100)
    alpha = np.asarray(im.getchannel("A"))
    rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
    assert (cols[0], cols[-1] + 1) == (85, 115)  # centred, not enlarged (30 px wide)
    assert rows[-1] + 1 == 90  # resting on the 10 px padding
    p = body["placement"]
    assert (p["left"], p["top"], p["width"], p["height"], p["scale"]) == (85, 70, 30, 20, 1.0)
    im, _ = fetch(cutout(service, 5, canvas={"width": 100, "height": 100, "upscale": True}).json()["result_url"])
    alpha = np.asarray(im.getchannel("A"))
    cols = np.flatnonzero(alpha.any(axis=0))
    assert im.size == (100, 100) and (cols[0], cols[-1] + 1) == (0, 100)  # enlarged to fill the width


def test_bg_color_jpeg_webp_and_alpha_only(service):
    im, _ = fetch(cutout(service, 6, bg_color="#00ff00", crop_margin="5px").json()["result_url"])
    assert im.mode == "RGBA" and im.getpixel((0, 0)) == (0, 255, 0, 255) and im.getpixel((15, 10)) == (*RED, 255)
    body = cutout(service, 7, format="jpg", crop_margin="5px")
    assert body.status_code == 200, body.text
    im, _ = fetch(body.json()["result_url"], "image/jpeg")
    assert im.format == "JPEG" and im.mode == "RGB"
    assert all(abs(a - b) <= 3 for a, b in zip(im.getpixel((0, 0)), (255, 255, 255), strict=True))  # white when none given
    assert all(abs(a - b) <= 12 for a, b in zip(im.getpixel((15, 10)), RED, strict=True))
    im, _ = fetch(cutout(service, 8, format="webp", crop_margin="5px").json()["result_url"], "image/webp")
    assert im.format == "WEBP" and im.mode == "RGBA" and im.getpixel((0, 0))[3] == 0 and im.getpixel((15, 10))[3] == 255
    im, _ = fetch(cutout(service, 9, channels="alpha", crop_margin="2px").json()["result_url"])
    mask = np.asarray(im)
    assert im.mode == "L" and mask.shape == (24, 34) and mask[2:22, 2:32].min() == 255 and mask[0].max() == 0


def test_max_size_only_downscales(service):
    im, _ = fetch(cutout(service, 10, max_size=15).json()["result_url"])
    assert im.size == (15, 10)
    im, _ = fetch(cutout(service, 11, max_size=4000).json()["result_url"])
    assert im.size == (30, 20)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"crop_margin": "12"}, "crop_margin"),
        ({"canvas": {"width": 10}}, "canvas.height"),
        ({"canvas": {"width": 10, "height": 10, "position": "left"}}, "canvas.position"),
        ({"bg_color": "red"}, "bg_color"),
        ({"format": "gif"}, "format"),
        ({"channels": "alpha", "bg_color": "#fff"}, "bg_color"),
        ({"max_size": 0}, "max_size"),
    ],
)
def test_invalid_options_are_400_naming_the_field(service, options, field):
    resp = cutout(service, 12, **options)
    assert resp.status_code == 400
    assert resp.json()["error"]["parameter"] == field


@pytest.fixture(scope="module")
def cached_service():
    """A second instance with the result cache on (the shared one has it off)."""
    with running_service(env_extra={"CUTOUT_RESULT_CACHE_S": str(CACHE_S)}) as svc:
        yield svc


def test_cache_hit_serves_the_same_bytes_and_other_orgs_and_options_miss(cached_service, image_server):
    service = cached_service
    png, _ = block_image(seed=20)
    first = service.post({"file": b64(png)})
    assert first.headers["X-Cache"] == "miss"
    image_server.files["/cache-20.png"] = png
    second = service.post({"image_url": image_server.url + "/cache-20.png", "sku": "again"})
    assert second.headers["X-Cache"] == "hit"  # same bytes, whichever way they came
    assert "segment" not in second.headers["Server-Timing"]  # the model did not run
    a, b = first.json(), second.json()
    assert b["sku"] == "again" and (a["crop"], a["source"]) == (b["crop"], b["source"])
    assert fetch(a["result_url"])[1] == fetch(b["result_url"])[1]
    assert service.post({"file": b64(png)}, token=service.other_token).headers["X-Cache"] == "miss"
    assert service.post({"file": b64(png), "crop_margin": "1px"}).headers["X-Cache"] == "miss"
    assert service.post({"file": b64(png), "preserve_alpha": True}).headers["X-Cache"] == "miss"


def test_concurrent_identical_requests_leave_one_whole_file(cached_service):
    service = cached_service
    png, tight = block_image(seed=21)

    def post(_):
        return service.post({"file": b64(png)})

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(post, range(4)))
    assert all(r.status_code == 200 for r in answers)
    names = {r.json()["result_url"].split("/results/")[1].split("?")[0] for r in answers}
    assert len(names) == 1  # one stored result, whoever computed it
    assert all(fetch(r.json()["result_url"])[1] == imageio.encode_png(tight, 2) for r in answers)
    assert service.post({"file": b64(png)}).headers["X-Cache"] == "hit"
