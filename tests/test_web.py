"""The OpenAPI document and the pages: a valid OpenAPI 3.1 document generated from the models
the service validates with, and pages that load nothing from elsewhere and run no inline script."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from openapi_spec_validator import validate

from pipeline import web
from pipeline.contract import CutoutResult, ErrorBody
from pipeline.errors import CutoutError
from pipeline.openapi import CUTOUT_ERRORS, document
from pipeline.request import CutoutRequest, parse_fields


def test_the_document_is_valid_openapi_3_1_with_every_route():
    doc = document()
    validate(doc)
    assert doc["openapi"] == "3.1.0"
    assert set(doc["paths"]) == {
        "/product/cutout",
        "/results/{org}/{year}/{month}/{day}/{name}",
        "/healthz",
        "/openapi.json",
        "/docs",
        "/",
    }


def test_its_schemas_are_the_models_the_service_uses():
    schemas = document()["components"]["schemas"]
    assert schemas["CutoutRequest"]["properties"] == CutoutRequest.model_json_schema()["properties"]
    assert set(schemas["CutoutResult"]["required"]) == set(CutoutResult.model_fields)
    # a field added to the request model appears in the document with no other change
    assert set(schemas["CutoutRequest"]["properties"]) == set(CutoutRequest.model_fields)


def test_every_error_status_has_the_error_shape_and_429_503_promise_retry_after():
    responses = document()["paths"]["/product/cutout"]["post"]["responses"]
    assert set(responses) == {"200"} | {str(s) for s in CUTOUT_ERRORS}
    for status in CUTOUT_ERRORS:
        assert responses[str(status)]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
        assert ("Retry-After" in responses[str(status)]["headers"]) == (status in (429, 503))
    # what the service raises has that shape
    body = CutoutError(415, "unsupported_format", "m", "file", {"detected": "GIF"}).to_body()
    assert ErrorBody.model_validate(body).error.details == {"detected": "GIF"}


@pytest.mark.parametrize("field", ["sku", "image_url", "file", "force_rmbg"])
def test_what_the_schema_allows_the_service_accepts(field):
    schema = CutoutRequest.model_json_schema()["properties"][field]
    value = {"sku": "x" * 128, "image_url": "https://e.com/" + "a" * 4000, "file": "abc", "force_rmbg": None}[field]
    assert "null" in str(schema)  # null is absent, for every field
    assert parse_fields({"file": "abc", field: value})


def test_pages_have_a_strict_policy_and_no_inline_script_or_foreign_asset():
    for path in web.PAGES:
        page = web.page(path, "http://127.0.0.1:8000")
        policy = page.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "unsafe" not in policy and "default-src 'none'" in policy
        assert "frame-ancestors 'none'" in policy and page.headers["X-Frame-Options"] == "DENY"
        refs = _refs(page.body.decode())
        assert refs["inline_scripts"] == 0 and refs["inline_styles"] == 0
        for url in refs["urls"]:
            assert url.startswith("/"), url  # same origin
            found = web.page(url, "http://127.0.0.1:8000")
            assert found is not None and found.body, url


def test_the_demo_keeps_the_token_in_memory_only():
    script = web.page("/ui/demo.js", "").body.decode()
    assert not re.search(r"localStorage|sessionStorage|document\.cookie|indexedDB", script)


def test_assets_outside_the_list_are_not_served():
    for path in ("/ui/../request.py", "/ui/", "/ui/x.py", "/ui/demo.js/", "/ui//etc/passwd", "/index.html"):
        assert web.page(path, "") is None, path


def _refs(html: str) -> dict:
    found = {"urls": [], "inline_scripts": 0, "inline_styles": 0}

    class Parser(HTMLParser):
        script = False

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "script":
                self.script = "src" not in attrs
                if attrs.get("src"):
                    found["urls"].append(attrs["src"])
            if tag == "link" and attrs.get("rel") == "stylesheet":
                found["urls"].append(attrs["href"])
            if tag == "style" or "style" in attrs or any(k.startswith("on") for k in attrs):
                found["inline_styles" if tag == "style" or "style" in attrs else "inline_scripts"] += 1

        def handle_data(self, data):
            if self.script and data.strip():
                found["inline_scripts"] += 1

        def handle_endtag(self, tag):
            self.script = False

    Parser().feed(html)
    return found
