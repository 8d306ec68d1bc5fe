"""remove.bg's request and answer (pipeline/removebg.py): body types, parameter mapping, errors."""

from __future__ import annotations

import base64
import json

import pytest
import requests

from pipeline import removebg
from pipeline.errors import CutoutError
from pipeline.request import Frame

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 20


def multipart(fields: dict, files: dict) -> tuple[str, bytes]:
    prepared = requests.Request("POST", "http://x", data=fields, files=files).prepare()
    return prepared.headers["Content-Type"], prepared.body


def test_three_body_types_read_the_same_fields():
    ctype, body = multipart({"size": "full", "crop": "true"}, {"image_file": ("a.png", PNG)})
    fields = removebg.read_fields(ctype, body)
    assert fields == {"size": "full", "crop": "true", "image_file": PNG}
    assert removebg.read_fields("application/x-www-form-urlencoded", b"size=full&crop=true") == {"size": "full", "crop": "true"}
    assert removebg.read_fields("application/json; charset=utf-8", b'{"size": "full", "crop": true}') == {
        "size": "full",
        "crop": True,
    }


def test_file_bytes_become_the_pipelines_base64():
    ctype, body = multipart({}, {"image_file": ("a.png", PNG)})
    parsed = removebg.parse(ctype, body)
    assert base64.b64decode(parsed.cutout.file) == PNG and parsed.cutout.image_url is None


def test_defaults_map_to_remove_bg_defaults():
    out = removebg.to_request({"image_url": "https://e.test/a.jpg"}).cutout.output
    assert out.frame == Frame("original", None) and out.max_pixels == 250_000 and out.format == "png"
    assert out.channels == "rgba" and out.crop_margin is None and out.bg_color is None


def test_parameters_map_onto_output_options():
    parsed = removebg.to_request(
        {"image_file_b64": "aGk=", "size": "hd", "crop": "true", "crop_margin": "10%", "bg_color": "ff0000", "type": "car"}
    )
    out = parsed.cutout.output
    assert out.frame is None and out.crop_margin.unit == "%" and out.max_pixels == 4_000_000
    assert out.bg_color == (255, 0, 0, 255) and out.format == "jpg"  # auto: an opaque background gives jpg
    assert parsed.type == "car"
    scaled = removebg.to_request({"image_url": "https://e.test/a", "scale": "50%"}).cutout.output
    assert scaled.frame == Frame("center", 0.5)
    assert removebg.to_request({"image_url": "https://e.test/a", "position": "center"}).cutout.output.frame == Frame(
        "center", None
    )
    alpha = removebg.to_request({"image_url": "https://e.test/a", "channels": "alpha", "bg_color": "fff"}).cutout.output
    assert alpha.channels == "alpha" and alpha.bg_color is None and alpha.format == "png"
    ignored = removebg.to_request(
        {"image_url": "https://e.test/a", "add_shadow": "true", "semitransparency": "false", "type_level": "2"}
    )
    assert ignored.cutout.output == removebg.to_request({"image_url": "https://e.test/a"}).cutout.output


@pytest.mark.parametrize(
    ("fields", "parameter"),
    [
        ({"image_url": "https://e.test/a", "size": "huge"}, "size"),
        ({"image_url": "https://e.test/a", "type": "spaceship"}, "type"),
        ({"image_url": "https://e.test/a", "format": "zip"}, "format"),
        ({"image_url": "https://e.test/a", "format": "gif"}, "format"),
        ({"image_url": "https://e.test/a", "crop": "maybe"}, "crop"),
        ({"image_url": "https://e.test/a", "position": "10% 20%"}, "position"),
        ({"image_url": "https://e.test/a", "scale": "5%"}, "scale"),
        ({"image_url": "https://e.test/a", "roi": "10% 10% 90% 90%"}, "roi"),
        ({"image_url": "https://e.test/a", "bg_color": "green"}, "bg_color"),
        ({"image_url": "https://e.test/a", "bg_image_url": "https://e.test/bg"}, "bg_image_url"),
        ({"image_url": "https://e.test/a", "crop": "true", "crop_margin": "nope"}, "crop_margin"),
        ({"image_url": "https://e.test/a", "image_file_b64": "aGk="}, "image_url"),
        ({}, "image_file"),
    ],
)
def test_invalid_and_refused_parameters_name_the_field(fields, parameter):
    with pytest.raises(CutoutError) as err:
        removebg.to_request(fields)
    assert err.value.status == 400 and err.value.parameter == parameter


def test_unreadable_bodies():
    with pytest.raises(CutoutError) as err:
        removebg.read_fields("text/plain", b"hi")
    assert err.value.status == 415
    with pytest.raises(CutoutError) as err:
        removebg.read_fields("multipart/form-data", b"--x\r\n")
    assert err.value.status == 400
    with pytest.raises(CutoutError):
        removebg.read_fields("application/json", b"[1]")


def test_answer_as_file_or_json_with_the_foreground_box():
    parsed = removebg.to_request({"image_url": "https://e.test/a"})
    placement = {"left": 5, "top": 6, "width": 7, "height": 8, "scale": 1.0, "output": {"width": 40, "height": 30}}
    result = {"data": PNG, "placement": placement}
    reply = removebg.answer(parsed, result, "*/*", 60, "miss", None)
    assert reply.status == 200 and reply.body == PNG and reply.media_type == "image/png"
    assert {k: reply.headers[k] for k in ("X-Width", "X-Height", "X-Foreground-Left", "X-Foreground-Top")} == {
        "X-Width": "40",
        "X-Height": "30",
        "X-Foreground-Left": "5",
        "X-Foreground-Top": "6",
    }
    assert (
        reply.headers["X-Type"] == "product" and reply.headers["X-Cache"] == "miss" and reply.headers["X-RateLimit-Limit"] == "60"
    )
    reply = removebg.answer(parsed, result, "application/json", None, None, "rid")
    data = json.loads(reply.body)["data"]
    assert (
        base64.b64decode(data["result_b64"]) == PNG and data["foreground_width"] == 7 and reply.headers["X-Request-Id"] == "rid"
    )


def test_errors_take_remove_bg_shape_statuses_and_rate_limit_headers():
    reply = removebg.error_response(CutoutError(401, "unauthorized", "A valid key is required.", "api_token"), None, None)
    assert reply.status == 403
    assert json.loads(reply.body) == {
        "errors": [{"title": "A valid key is required.", "code": "unauthorized", "source": {"parameter": "api_token"}}]
    }
    limited = removebg.error_response(CutoutError(429, "rate_limited", "Slow down.", None, retry_after=7), 30, None, now=1000)
    assert limited.status == 429
    assert {
        k: limited.headers[k] for k in ("Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
    } == {
        "Retry-After": "7",
        "X-RateLimit-Limit": "30",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "1007",
    }
    assert removebg.error_response(CutoutError(422, "no_product_found", "None.", None), None, None).status == 400
