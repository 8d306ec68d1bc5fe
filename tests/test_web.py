"""The OpenAPI document and the pages: a valid OpenAPI 3.1 document generated from the models
the service validates with, and pages that load nothing from elsewhere and run no inline script."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from deployments.ingress import CUTOUT_ROUTE, HEALTH_ROUTE
from pipeline import removebg, web
from pipeline.contract import CutoutResult, ErrorBody
from pipeline.errors import CutoutError
from pipeline.openapi import CUTOUT_ERRORS, REMOVEBG_NEVER, document, removebg_errors
from pipeline.request import CutoutRequest, parse_fields
from pipeline.service import CutoutOptions, Finisher, ImageLoader
from pipeline.settings import load_settings
from pipeline.storage import RESULTS_ROUTE
from tests.images import encode, rgba_with_alpha


def conforms(body: dict, model: str) -> None:
    """Raise unless ``body`` is valid against the published schema of ``model``."""
    schema = {"$ref": f"#/components/schemas/{model}", "components": document()["components"]}
    Draft202012Validator(schema).validate(body)


def test_the_document_is_valid_openapi_3_1_with_every_route():
    doc = document()
    validate(doc)
    assert doc["openapi"] == "3.1.0"
    assert set(doc["paths"]) == {
        "/product/cutout",
        "/v1.0/removebg",
        "/results/{org}/{year}/{month}/{day}/{name}",
        "/results/{org}/cache/{name}",
        "/healthz",
        "/openapi.json",
        "/docs",
        "/",
    }
    # the routes the ingress answers, by the constants it routes with
    for route in (CUTOUT_ROUTE, removebg.ROUTE, HEALTH_ROUTE, web.OPENAPI_ROUTE, *web.PAGES):
        assert route in doc["paths"], route
    assert all(p.startswith(RESULTS_ROUTE) for p in doc["paths"] if p.startswith("/results"))
    assert doc["paths"]["/v1.0/removebg"]["post"]["security"] == [{"x_api_key": []}]
    assert doc["components"]["securitySchemes"]["x_api_key"]["name"] == "X-Api-Key"


def test_its_schemas_are_the_models_the_service_uses():
    schemas = document()["components"]["schemas"]
    assert schemas["CutoutRequest"]["properties"] == CutoutRequest.model_json_schema()["properties"]
    assert set(schemas["CutoutResult"]["required"]) == set(CutoutResult.model_fields) - {"placement"}
    assert set(schemas["CutoutResult"]["properties"]) == set(CutoutResult.model_fields)
    # a field added to the request model appears in the document with no other change
    assert set(schemas["CutoutRequest"]["properties"]) == set(CutoutRequest.model_fields)
    # the remove.bg endpoint reads its fields through RemoveBgForm: the same three bodies publish it
    assert set(schemas["RemoveBgForm"]["properties"]) == set(removebg.RemoveBgForm.model_fields)
    body = document()["paths"]["/v1.0/removebg"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/x-www-form-urlencoded", "application/json"}
    assert {c["schema"]["$ref"] for c in body.values()} == {"#/components/schemas/RemoveBgForm"}


def test_every_value_the_remove_bg_schema_lists_is_accepted():
    """Each value of each enumerated field of the published remove.bg form maps onto a request."""
    properties = document()["components"]["schemas"]["RemoveBgForm"]["properties"]
    listed = [(name, value) for name, prop in properties.items() for value in prop.get("enum", []) if value is not None]
    assert {name for name, _ in listed} >= {"size", "type", "format", "crop", "channels", "position", "roi"}
    for name, value in listed:
        parsed = removebg.to_request({"image_url": "https://e.test/a.jpg", name: value})
        assert parsed.cutout.image_url == "https://e.test/a.jpg", (name, value)


def test_every_error_status_has_the_error_shape_and_429_503_promise_retry_after():
    responses = document()["paths"]["/product/cutout"]["post"]["responses"]
    assert set(responses) == {"200"} | {str(s) for s in CUTOUT_ERRORS}
    for status in CUTOUT_ERRORS:
        assert responses[str(status)]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
        assert ("Retry-After" in responses[str(status)]["headers"]) == (status in (429, 503))
    # what the service raises has that shape
    body = CutoutError(415, "unsupported_format", "m", "file", {"detected": "GIF"}).to_body()
    assert ErrorBody.model_validate(body).error.details == {"detected": "GIF"}


def test_remove_bg_errors_are_ours_under_its_statuses_with_its_rate_limit_headers():
    responses = document()["paths"]["/v1.0/removebg"]["post"]["responses"]
    documented = removebg_errors()
    assert set(responses) == {"200"} | {str(s) for s in documented}
    for status in CUTOUT_ERRORS:  # every status the pipeline raises has its remove.bg status documented
        assert removebg.STATUS_MAP.get(status, status) in documented, status
    assert 401 not in documented and 415 not in documented and 460 not in documented
    limited = responses["429"]["headers"]
    for header in ("Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"):
        assert limited[header]["required"], header
    # what the endpoint sends, for each of our errors, has a documented status, headers and shape
    for status, (_, reasons) in CUTOUT_ERRORS.items():
        retry = 3 if status in (429, 503) else None
        reason = next(r for r in reasons if r not in REMOVEBG_NEVER)
        reply = removebg.error_response(CutoutError(status, reason, "m", "size", retry_after=retry), 30, "rid", now=0)
        answer = responses[str(reply.status)]
        assert reply.media_type in answer["content"] and reason in answer["description"]
        required = {h for h, spec in answer["headers"].items() if spec.get("required")}
        assert required <= set(reply.headers), (status, required)
        conforms(json.loads(reply.body), "RemoveBgErrors")


@pytest.mark.parametrize("field", ["sku", "image_url", "file", "force_rmbg"])
def test_what_the_schema_allows_the_service_accepts(field):
    schema = CutoutRequest.model_json_schema()["properties"][field]
    value = {"sku": "x" * 128, "image_url": "https://e.com/" + "a" * 4000, "file": "abc", "force_rmbg": None}[field]
    assert "null" in str(schema)  # null is absent, for every field
    assert parse_fields({"file": "abc", field: value})


@pytest.fixture
def finish(tmp_path):
    """Run the finishing stage on a real RGBA PNG (its own alpha: no model) into real local storage."""
    settings = load_settings({"data_dir": str(tmp_path), "result_cache_s": 0}, environ={})
    loader, finisher = ImageLoader(settings), Finisher(settings)
    image, _ = rgba_with_alpha()
    loaded = loader.decode(encode(image, "PNG"), "file", False)

    def run(return_bytes: bool = False, **fields) -> dict:
        request = parse_fields({"file": "x", "sku": "MUG-1", **fields})
        options = CutoutOptions("acme", "MUG-1", False, True, "rid", request.output, None, return_bytes)
        rgba, crop = finisher.compose(loaded, None, options)
        return finisher.store(loaded, rgba, crop, options)[0]

    return run


def test_the_published_result_model_is_what_a_real_answer_is(finish):
    """The 200 body the finishing stage builds, with and without output options, matches the
    published ``CutoutResult`` exactly: every key it sends is in the schema, and ``placement``
    only where options were given."""
    plain = finish()
    conforms(plain, "CutoutResult")
    assert list(plain) == ["result_url", "sku", "crop", "source"]
    optioned = finish(canvas={"width": 80, "height": 80, "padding": 4}, format="webp")
    conforms(optioned, "CutoutResult")
    assert set(optioned) == set(document()["components"]["schemas"]["CutoutResult"]["properties"])
    assert optioned["placement"]["output"] == {"width": 80, "height": 80} and optioned["result_url"].split("?")[0].endswith(
        ".webp"
    )
    assert CutoutResult.model_validate(optioned).model_dump(mode="json") == optioned  # it round-trips through the client's model


def test_the_remove_bg_answers_match_the_document(finish):
    record = finish(return_bytes=True, crop_margin="2px")
    parsed = removebg.to_request({"image_url": "https://e.test/a.jpg", "crop": "true"})
    operation = document()["paths"]["/v1.0/removebg"]["post"]["responses"]["200"]
    required = {h for h, spec in operation["headers"].items() if spec.get("required")}
    as_file = removebg.answer(parsed, record, "image/*", 30, "miss", "rid")
    assert as_file.media_type in operation["content"] and required <= set(as_file.headers)
    assert (as_file.headers["X-Width"], as_file.headers["X-Height"]) == ("28", "26")  # the 24x22 box and 2 px on each side
    as_json = removebg.answer(parsed, record, "application/json", None, None, None)
    assert as_json.media_type in operation["content"] and required <= set(as_json.headers)
    body = json.loads(as_json.body)
    conforms(body, "RemoveBgResult")
    assert base64.b64decode(body["data"]["result_b64"]) == record["data"] and body["data"]["foreground_left"] == 2


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
