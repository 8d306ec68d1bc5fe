"""The OpenAPI 3.1 document of the HTTP API, served at ``GET /openapi.json``.

Its schemas are generated from the models the service itself uses: the request body from
:class:`pipeline.request.CutoutRequest` (which validates every request), the answers from
:mod:`pipeline.contract` (which builds them). What pydantic cannot know (routes, statuses,
headers, the reasons of each error status) is declared once, here.
"""

from __future__ import annotations

import functools
from importlib import metadata
from typing import Any

from pydantic.json_schema import models_json_schema

from pipeline.contract import CutoutResult, ErrorBody, Health
from pipeline.request import CutoutRequest

CUTOUT_ERRORS: dict[int, tuple[str, list[str]]] = {
    400: (
        "Malformed input; `parameter` names the field at fault.",
        [
            "malformed_json",
            "invalid_parameter",
            "missing_image",
            "invalid_base64",
            "corrupt_image",
            "invalid_url",
            "url_not_allowed",
        ],
    ),
    401: ("The `api_token` header is missing or unknown.", ["unauthorized"]),
    404: ("`image_url` answered 404.", ["image_not_found"]),
    413: (
        "The body, the image's bytes or its pixel count is over its limit.",
        ["request_too_large", "file_too_large", "resolution_too_large"],
    ),
    415: ("Not JPEG, PNG or WebP (`details.detected` names what it is, when known).", ["unsupported_format"]),
    422: ("Moderation failed, or there is nothing to cut out.", ["content_moderation_failed", "no_product_found"]),
    429: ("The organization is over its rate limit; retry after `Retry-After` seconds.", ["rate_limited"]),
    460: ("`image_url` could not be downloaded.", ["failed_to_download_image"]),
    500: ("A bug; the body says nothing more, the log has the details under the request id.", ["internal_error"]),
    503: (
        "The service is at capacity (`overloaded`) or a stage is unavailable (`unavailable`); retry after `Retry-After` seconds.",
        ["overloaded", "unavailable"],
    ),
}
RESULT_ERRORS: dict[int, tuple[str, list[str]]] = {
    403: ("The URL was changed, or has expired.", ["invalid_signature", "url_expired"]),
    404: ("No such result (already deleted, or never stored).", ["result_not_found", "not_found"]),
    503: ("Result storage is unavailable; retry after `Retry-After` seconds.", ["unavailable"]),
}
RETRY_AFTER = {
    "description": "Seconds to wait before trying again.",
    "required": True,
    "schema": {"type": "integer", "minimum": 0},
}
REQUEST_ID = {
    "description": "The id of the request in the service's logs (the client's own `X-Request-Id` when it sent a valid one).",
    "schema": {"type": "string"},
}
SERVER_TIMING = {
    "description": "Milliseconds of each stage (`fetch`, `decode`, `segment`, ..., `total`).",
    "schema": {"type": "string"},
}
_SCHEMA_REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _SCHEMA_REF.format(model=name)}


def _error_responses(errors: dict[int, tuple[str, list[str]]]) -> dict[str, Any]:
    responses = {}
    for status, (description, reasons) in errors.items():
        headers = {"X-Request-Id": REQUEST_ID}
        if status in (429, 503):
            headers["Retry-After"] = RETRY_AFTER
        reasons_text = ", ".join(f"`{r}`" for r in reasons)
        responses[str(status)] = {
            "description": f"{description} `reason`: {reasons_text}.",
            "headers": headers,
            "content": {"application/json": {"schema": _ref("ErrorBody")}},
        }
    return responses


def _page(description: str, media_type: str) -> dict[str, Any]:
    return {
        "tags": ["pages"],
        "summary": description,
        "responses": {"200": {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}},
    }


def _result_parameters() -> list[dict[str, Any]]:
    path = [
        ("org", r"^[a-z0-9][a-z0-9_-]{0,62}$", "The organization the result belongs to."),
        ("year", r"^\d{4}$", "UTC year the result was stored."),
        ("month", r"^\d{2}$", "UTC month."),
        ("day", r"^\d{2}$", "UTC day."),
        ("name", r"^[0-9a-f]{32}\.png$", "The result's random name."),
    ]
    params: list[dict[str, Any]] = [
        {"name": n, "in": "path", "required": True, "description": d, "schema": {"type": "string", "pattern": p}}
        for n, p, d in path
    ]
    params += [
        {
            "name": "expires",
            "in": "query",
            "required": True,
            "description": "Unix time the URL expires.",
            "schema": {"type": "string"},
        },
        {
            "name": "signature",
            "in": "query",
            "required": True,
            "description": "The URL's signature.",
            "schema": {"type": "string"},
        },
    ]
    return params


def _version() -> str:
    try:
        return metadata.version("product-cutout")
    except metadata.PackageNotFoundError:
        return "0.0.0"


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (built once per process; callers must not change it)."""
    _, top = models_json_schema(
        [(CutoutRequest, "validation"), (CutoutResult, "serialization"), (ErrorBody, "serialization"), (Health, "serialization")],
        ref_template=_SCHEMA_REF,
    )
    schemas = top["$defs"]
    result_get = {
        "tags": ["results"],
        "summary": "A stored result (when results are stored locally and the service serves them itself).",
        "description": "The `result_url` of a 200 points here; it carries its own signature and needs no token.",
        "parameters": _result_parameters(),
        "responses": {
            "200": {
                "description": "The RGBA PNG.",
                "headers": {"X-Request-Id": REQUEST_ID},
                "content": {"image/png": {"schema": {"type": "string", "contentMediaType": "image/png"}}},
            },
            **_error_responses(RESULT_ERRORS),
        },
    }
    result_head = {**result_get, "summary": "The headers of a stored result, without its body."}
    result_head["responses"] = {**result_get["responses"], "200": {"description": "The result exists and its URL is valid."}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Product Cutout",
            "version": _version(),
            "description": (
                "Send a product photo (by URL or base64), get back the URL of a transparent PNG with the product cut out "
                "and cropped tight. Every error is JSON with the same five keys; retry a 429 or a 503 after `Retry-After`."
            ),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": "/"}],
        "tags": [
            {"name": "cutout", "description": "The API."},
            {"name": "results", "description": "Results stored on the service's own disk."},
            {"name": "operations", "description": "Health and this document."},
            {"name": "pages", "description": "The demo page and the API reference for browsers."},
        ],
        "paths": {
            "/product/cutout": {
                "post": {
                    "tags": ["cutout"],
                    "operationId": "cutout",
                    "summary": "Cut the product out of a photo.",
                    "security": [{"api_token": []}],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("CutoutRequest")}}},
                    "responses": {
                        "200": {
                            "description": "The cutout is stored; `result_url` serves it.",
                            "headers": {"X-Request-Id": REQUEST_ID, "Server-Timing": SERVER_TIMING},
                            "content": {"application/json": {"schema": _ref("CutoutResult")}},
                        },
                        **_error_responses(CUTOUT_ERRORS),
                    },
                }
            },
            "/results/{org}/{year}/{month}/{day}/{name}": {"get": result_get, "head": result_head},
            "/healthz": {
                "get": {
                    "tags": ["operations"],
                    "operationId": "health",
                    "summary": "Whether every stage of the pipeline is ready.",
                    "responses": {
                        "200": {
                            "description": "Every stage is ready.",
                            "content": {"application/json": {"schema": _ref("Health")}},
                        },
                        "503": {
                            "description": "A stage is not ready (yet).",
                            "headers": {"Retry-After": RETRY_AFTER},
                            "content": {"application/json": {"schema": _ref("Health")}},
                        },
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "tags": ["operations"],
                    "operationId": "openapi",
                    "summary": "This document.",
                    "responses": {
                        "200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}
                    },
                }
            },
            "/docs": {"get": {**_page("The API reference, rendered from this document.", "text/html"), "operationId": "docs"}},
            "/": {"get": {**_page("A page to try the API in a browser.", "text/html"), "operationId": "demo"}},
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "api_token": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "api_token",
                    "description": "The organization's token (`cutout token create ORG`); `api-token` is accepted too.",
                }
            },
        },
    }
