"""Request fields: types, defaults, precedence; every wrong type is a 400 naming the field."""

from __future__ import annotations

import json

import pytest

from pipeline.errors import CutoutError
from pipeline.request import parse_body


def parse(obj) -> object:
    return parse_body(json.dumps(obj).encode())


def error(obj_or_bytes) -> CutoutError:
    raw = obj_or_bytes if isinstance(obj_or_bytes, bytes) else json.dumps(obj_or_bytes).encode()
    with pytest.raises(CutoutError) as info:
        parse_body(raw)
    assert info.value.status == 400
    return info.value


def test_defaults_and_unknown_fields_ignored():
    req = parse({"file": "abc", "whatever": 1})
    assert (req.force_rmbg, req.preserve_alpha, req.content_moderation, req.sku) == (False, False, False, None)
    assert req.source_parameter == "file"


def test_image_url_wins_over_file():
    req = parse({"file": "abc", "image_url": "https://example.com/a.jpg"})
    assert req.image_url and req.file is None and req.source_parameter == "image_url"


@pytest.mark.parametrize(
    "field,value",
    [("sku", 5), ("image_url", ["x"]), ("file", 3.5), ("force_rmbg", "true"), ("preserve_alpha", 1), ("content_moderation", {})],
)
def test_wrong_type_names_the_field(field, value):
    body = {"file": "abc", field: value}
    assert error(body).parameter == field


def test_no_image_is_400():
    assert error({"sku": "x"}).reason == "missing_image"


@pytest.mark.parametrize("raw", [b"{", b"[]", b'"x"', b"", b"\xff\xfe"])
def test_malformed_json_is_400(raw):
    assert error(raw).reason == "malformed_json"


def test_sku_limits():
    assert parse({"file": "a", "sku": "x" * 128}).sku == "x" * 128
    assert error({"file": "a", "sku": "x" * 129}).parameter == "sku"
    assert error({"file": "a", "sku": "bad\nsku"}).parameter == "sku"
