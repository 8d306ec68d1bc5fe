"""End to end through real HTTP against the running application: every status of docs/api.md
that can be produced here, the alpha table on real requests, and result URLs that expire."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
import requests
from PIL import Image

from pipeline.timing import parse_server_timing
from tests.images import b64, encode, eval_image, rgba_with_alpha

pytestmark = pytest.mark.integration

needs_eval = pytest.mark.usefixtures("eval_dir")


def error_of(resp: requests.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    err = resp.json()["error"]
    assert err["code"] == status and set(err) == {"code", "reason", "message", "parameter", "details"}
    return err


def fetch_png(url: str) -> Image.Image:
    resp = requests.get(url, timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/png"
    im = Image.open(io.BytesIO(resp.content))
    im.load()
    return im


def test_health(service):
    resp = requests.get(service.url + "/healthz", timeout=10)
    assert resp.status_code == 200
    assert set(resp.json()["stages"].values()) == {"ready"}


@needs_eval
def test_base64_cutout_returns_cropped_rgba_png(service):
    src = Image.open(eval_image("banana1.png")).convert("RGB")
    resp = service.post({"sku": "SKU-1", "file": b64(encode(src, "JPEG", quality=95))})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["sku"] == "SKU-1"
    assert body["source"] == {"width": src.width, "height": src.height}
    crop = body["crop"]
    assert 0 < crop["width"] < src.width or 0 < crop["height"] < src.height  # cropped to the product
    im = fetch_png(body["result_url"])
    assert im.mode == "RGBA" and im.size == (crop["width"], crop["height"])
    alpha = np.asarray(im.getchannel("A"))
    # tight: every edge row and column of the crop has a visible pixel
    assert alpha[0].any() and alpha[-1].any() and alpha[:, 0].any() and alpha[:, -1].any()
    assert (alpha == 0).any() and (alpha == 255).any()
    # every stage reports its time; the whole is at least the sum of the stages it ran
    timings = parse_server_timing(resp.headers["server-timing"])
    assert {"fetch", "decode", "segment", "compose", "encode", "store", "total"} <= set(timings)
    assert timings["segment"] > 0 and timings["total"] >= sum(v for k, v in timings.items() if k != "total") * 0.99
    assert len(resp.raw.headers.getlist("x-request-id")) == 1  # one id, Serve's and ours


def test_client_request_id_is_kept_and_answered_once(service):
    resp = service.post({"file": "bm90IGFuIGltYWdl"}, headers={"X-Request-Id": "order-42.retry-1"})
    assert resp.status_code == 415
    assert resp.raw.headers.getlist("x-request-id") == ["order-42.retry-1"]


def test_result_url_expires_and_file_is_deleted(service):
    im, _ = rgba_with_alpha()
    body = service.post({"file": b64(encode(im, "PNG")), "preserve_alpha": True}).json()
    url = body["result_url"]
    assert requests.get(url, timeout=10).status_code == 200
    tampered = url.replace("signature=", "signature=0")
    assert error_of(requests.get(tampered, timeout=10), 403)["reason"] == "invalid_signature"
    expires = int(url.split("expires=")[1].split("&")[0])
    time.sleep(max(0, expires - time.time()) + 1)
    assert error_of(requests.get(url, timeout=10), 403)["reason"] == "url_expired"
    name = url.split("/results/")[1].split("?")[0]
    deadline = time.time() + 15
    while (service.data_dir / "results" / name).exists() and time.time() < deadline:
        time.sleep(0.5)
    assert not (service.data_dir / "results" / name).exists()


def test_results_of_one_org_live_under_its_prefix(service):
    im, _ = rgba_with_alpha()
    a = service.post({"file": b64(encode(im, "PNG"))}).json()["result_url"]
    b = service.post({"file": b64(encode(im, "PNG"))}, token=service.other_token).json()["result_url"]
    assert "/results/acme/" in a and "/results/other/" in b
    # another org's name with this URL's signature is refused
    forged = b.split("?")[0] + "?" + a.split("?")[1]
    assert requests.get(forged, timeout=10).status_code == 403


def test_image_url_from_loopback(service, image_server):
    im, _ = rgba_with_alpha()
    image_server.files["/p.png"] = encode(im, "PNG")
    resp = service.post({"image_url": image_server.url + "/p.png", "file": "ignored"})
    assert resp.status_code == 200, resp.text
    # preserve_alpha is off: the partial (100) and faint (20) alpha are made binary and drop out
    assert resp.json()["crop"] == {"left": 20, "top": 10, "width": 20, "height": 20}


def test_image_url_to_an_unopened_address_is_400(service):
    for url in ("http://169.254.169.254/latest/meta-data", "http://10.0.0.1/a.png", "http://[::1]:9/a.png"):
        err = error_of(service.post({"image_url": url}), 400)
        assert err["reason"] == "url_not_allowed" and err["parameter"] == "image_url"


def test_404_and_460_from_upstream(service, image_server):
    assert error_of(service.post({"image_url": image_server.url + "/nothing.png"}), 404)["parameter"] == "image_url"
    assert error_of(service.post({"image_url": image_server.url + "/fail"}), 460)["reason"] == "failed_to_download_image"


def test_401_missing_and_unknown_token_never_echoed(service):
    body = {"file": "aGVsbG8="}
    assert error_of(service.post(body, token=None), 401)["parameter"] == "api_token"
    resp = service.post(body, token="ct_not-a-real-token-value")
    error_of(resp, 401)
    assert "not-a-real-token" not in resp.text


def test_400s(service):
    assert error_of(service.post(b"{not json", headers={"content-type": "application/json"}), 400)["reason"] == "malformed_json"
    assert error_of(service.post({"file": "abc", "force_rmbg": "yes"}), 400)["parameter"] == "force_rmbg"
    assert error_of(service.post({"sku": "x"}), 400)["reason"] == "missing_image"
    assert error_of(service.post({"file": "!!!notbase64"}), 400)["reason"] == "invalid_base64"
    jpeg = encode(Image.new("RGB", (300, 200), (10, 200, 10)), "JPEG")
    err = error_of(service.post({"file": b64(jpeg[: len(jpeg) // 2])}), 400)
    assert (err["reason"], err["parameter"]) == ("corrupt_image", "file")


def test_413_body_and_pixels(service):
    huge = b'{"file": "' + b"A" * (18 * 1024 * 1024) + b'"}'
    assert error_of(service.post(huge, headers={"content-type": "application/json"}), 413)["reason"] == "request_too_large"
    bomb = encode(Image.new("1", (10000, 6000)), "PNG")
    assert error_of(service.post({"file": b64(bomb)}), 413)["reason"] == "resolution_too_large"


def test_415_gif(service):
    gif = encode(Image.new("RGB", (20, 20), (255, 0, 0)), "GIF")
    assert error_of(service.post({"file": b64(gif)}), 415)["reason"] == "unsupported_format"


def test_422_no_product_found(service):
    transparent = Image.new("RGBA", (50, 50), (255, 0, 0, 0))
    err = error_of(service.post({"file": b64(encode(transparent, "PNG"))}), 422)
    assert err["reason"] == "no_product_found"
    flat = Image.new("RGB", (200, 200), (128, 128, 128))
    assert error_of(service.post({"file": b64(encode(flat, "PNG"))}), 422)["reason"] == "no_product_found"


@pytest.mark.parametrize(
    "force,preserve,check",
    [
        (False, True, lambda out, a: np.array_equal(out, a)),
        (False, False, lambda out, a: set(np.unique(out)) <= {0, 255} and np.array_equal(out > 0, a >= 128)),
    ],
)
def test_alpha_table_rows_with_input_alpha(service, force, preserve, check):
    im, alpha = rgba_with_alpha()
    body = service.post({"file": b64(encode(im, "PNG")), "force_rmbg": force, "preserve_alpha": preserve}).json()
    c = body["crop"]
    out = np.asarray(fetch_png(body["result_url"]).getchannel("A"))
    expected = alpha[c["top"] : c["top"] + c["height"], c["left"] : c["left"] + c["width"]]
    assert check(out, expected)


@needs_eval
def test_force_rmbg_runs_the_model_on_alpha_inputs(service):
    src = np.asarray(Image.open(eval_image("banana1.png")).convert("RGB"))
    h, w = src.shape[:2]
    alpha = np.full((h, w), 255, np.uint8)  # opaque almost everywhere: "has alpha" but no cutout
    alpha[:4, :4] = 0
    alpha[:, w // 2 : w // 2 + 10] = 77  # a partial stripe across the banana
    png = encode(Image.fromarray(np.dstack([src, alpha]), "RGBA"), "PNG")
    as_given = service.post({"file": b64(png)}).json()
    model_only = service.post({"file": b64(png), "force_rmbg": True, "preserve_alpha": False}).json()
    combined = service.post({"file": b64(png), "force_rmbg": True, "preserve_alpha": True}).json()
    assert as_given["crop"] == {"left": 0, "top": 0, "width": w, "height": h}  # input alpha is the mask
    assert model_only["crop"]["width"] < 0.95 * w and model_only["crop"]["height"] < 0.95 * h  # the model's
    a1 = np.asarray(fetch_png(model_only["result_url"]).getchannel("A"))
    a2 = np.asarray(fetch_png(combined["result_url"]).getchannel("A"))
    c = combined["crop"]
    stripe = alpha[c["top"] : c["top"] + c["height"], c["left"] : c["left"] + c["width"]] == 77
    assert stripe.any() and (a2[stripe] <= 77).all()  # min(model mask, input alpha)
    c1 = model_only["crop"]
    stripe1 = alpha[c1["top"] : c1["top"] + c1["height"], c1["left"] : c1["left"] + c1["width"]] == 77
    assert (a1[stripe1] > 77).any()  # the model mask alone ignores the input alpha


@needs_eval
def test_422_input_moderation(service):
    photo = eval_image("person1.jpg").read_bytes()
    resp = service.post({"file": b64(photo), "content_moderation": True})
    err = error_of(resp, 422)
    assert err["reason"] == "content_moderation_failed"
    assert err["details"]["stage"] == "input" and "FACE_FEMALE" in err["details"]["categories"]
    # without moderation the same photo is cut out
    assert service.post({"file": b64(photo)}).status_code == 200


@needs_eval
def test_422_output_moderation(service):
    # A small person on a large transparent canvas: too small for the detector in the input,
    # but the cutout is cropped to the person, where the face is plain to see.
    person = Image.open(eval_image("person1.jpg")).convert("RGBA")
    canvas = Image.new("RGBA", (4000, 3000), (0, 0, 0, 0))
    canvas.paste(person, (1333, 750))
    resp = service.post({"file": b64(encode(canvas, "PNG")), "content_moderation": True})
    err = error_of(resp, 422)
    assert err["details"]["stage"] == "output" and "FACE_FEMALE" in err["details"]["categories"]


def test_unknown_route_and_method(service):
    assert error_of(requests.get(service.url + "/nope", timeout=10), 404)["reason"] == "not_found"
    assert requests.get(service.url + "/product/cutout", timeout=10).status_code == 405


def test_json_errors_have_no_internals(service):
    resp = service.post({"file": b64(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)})
    text = json.dumps(resp.json())
    assert resp.status_code == 400 and "Traceback" not in text and "/work" not in text


def test_413_when_content_length_is_absent_or_understated(service):
    def chunks():
        yield b'{"file": "'
        for _ in range(18):
            yield b"A" * (1 << 20)
        yield b'"}'

    resp = service.post(chunks(), headers={"content-type": "application/json"})  # chunked: no Content-Length
    assert error_of(resp, 413)["reason"] == "request_too_large"
    # Content-Length says less than is sent: only the announced bytes are the body (HTTP framing),
    # so the service sees a short, broken body: a 4xx, at once, never a hang or a 500
    import socket

    host, port = service.url.rsplit("//", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        head = (
            f"POST /product/cutout HTTP/1.1\r\nHost: {host}\r\napi_token: {service.token}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        ).encode()
        try:
            sock.sendall(head + b'{"file": "' + b"A" * 2_000_000)
        except (ConnectionResetError, BrokenPipeError):
            pass  # answered and closed before the client had sent it all: the answer is still read
        reply = sock.recv(4096).decode(errors="replace")
    assert reply.startswith("HTTP/1.1 4"), reply[:200]
