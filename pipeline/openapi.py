"""The OpenAPI 3.1 document of the HTTP API, served at ``GET /openapi.json``.

Its schemas are generated from the models the service itself uses: the request bodies from
:class:`pipeline.request.CutoutRequest` (which validates every request) and
:class:`pipeline.removebg.RemoveBgForm` (through which the remove.bg endpoint reads its fields),
the answers from :mod:`pipeline.contract` (which builds them). What pydantic cannot know
(routes, statuses, headers, the reasons of each error status) is declared once, here; the
remove.bg endpoint's error statuses follow from ours through :data:`pipeline.removebg.STATUS_MAP`.
"""

from __future__ import annotations

import functools
from importlib import metadata
from typing import Any

from pydantic.json_schema import models_json_schema

from pipeline import removebg
from pipeline.contract import CutoutResult, ErrorBody, Health, RemoveBgErrors, RemoveBgResult
from pipeline.request import CutoutRequest
from pipeline.storage.base import CONTENT_TYPES

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
# The remove.bg endpoint answers our errors with remove.bg's statuses (removebg.STATUS_MAP); it
# never moderates, and reads its own body types.
REMOVEBG_ONLY_ERRORS = {400: ["malformed_body"], 415: ["unsupported_body"]}
REMOVEBG_NEVER = {"content_moderation_failed"}
REMOVEBG_DESCRIPTIONS = {
    400: (
        "Malformed body or input, an invalid or refused parameter (`source.parameter` names it), an image that is not "
        "JPEG, PNG or WebP, nothing to cut out, or `image_url` could not be downloaded."
    ),
    403: "The `X-Api-Key` header is missing or unknown.",
    404: CUTOUT_ERRORS[404][0],
    413: CUTOUT_ERRORS[413][0],
    429: CUTOUT_ERRORS[429][0],
    500: CUTOUT_ERRORS[500][0],
    503: CUTOUT_ERRORS[503][0],
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
CACHE_STATE = {
    "description": "`hit`: answered from the result cache, without running the model; `miss`: computed. "
    "Absent when the result cache is off (`CUTOUT_RESULT_CACHE_S=0`).",
    "schema": {"enum": ["hit", "miss"]},
}
RATE_LIMIT = {
    "X-RateLimit-Limit": {"description": "The organization's requests a minute.", "schema": {"type": "integer", "minimum": 1}},
    "X-RateLimit-Remaining": {"description": "Always 0 on a 429.", "schema": {"type": "integer", "minimum": 0}},
    "X-RateLimit-Reset": {"description": "Unix time when a request is allowed again.", "schema": {"type": "integer"}},
}
IMAGE_MEDIA_TYPES = sorted(set(CONTENT_TYPES.values()))
_EXTENSIONS = "|".join(CONTENT_TYPES)
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


def removebg_errors() -> dict[int, tuple[str, list[str]]]:
    """The error statuses and reasons of ``POST /v1.0/removebg``: ours, under remove.bg's statuses."""
    reasons: dict[int, list[str]] = {}
    for status, (_, ours) in sorted(CUTOUT_ERRORS.items()):
        mapped = removebg.STATUS_MAP.get(status, status)
        reasons.setdefault(mapped, []).extend(r for r in ours if r not in REMOVEBG_NEVER)
    for status, extra in REMOVEBG_ONLY_ERRORS.items():
        reasons[removebg.STATUS_MAP.get(status, status)] += extra
    return {status: (REMOVEBG_DESCRIPTIONS[status], found) for status, found in sorted(reasons.items())}


def _removebg_operation() -> dict[str, Any]:
    foreground = {
        f"X-Foreground-{side}": {
            "description": f"The product box's {side.lower()} in the file, in pixels.",
            "required": True,
            "schema": {"type": "integer", "minimum": 0},
        }
        for side in ("Top", "Left", "Width", "Height")
    }
    headers = {
        "X-Width": {"description": "The file's width.", "required": True, "schema": {"type": "integer", "minimum": 1}},
        "X-Height": {"description": "The file's height.", "required": True, "schema": {"type": "integer", "minimum": 1}},
        **foreground,
        "X-Type": {
            "description": "The request's `type` (`product` for `auto`).",
            "required": True,
            "schema": {"enum": [t for t in removebg.TYPES if t != "auto"]},
        },
        "X-Cache": CACHE_STATE,
        "X-RateLimit-Limit": {
            **RATE_LIMIT["X-RateLimit-Limit"],
            "description": "The organization's requests a minute (absent when unlimited).",
        },
        "X-Request-Id": REQUEST_ID,
    }
    files = {media: {"schema": {"type": "string", "contentMediaType": media}} for media in IMAGE_MEDIA_TYPES}
    errors = {}
    for status, (description, reasons) in removebg_errors().items():
        error_headers: dict[str, Any] = {"X-Request-Id": REQUEST_ID}
        if status in (429, 503):
            error_headers["Retry-After"] = RETRY_AFTER
        if status == 429:
            error_headers |= {name: {**header, "required": True} for name, header in RATE_LIMIT.items()}
        errors[str(status)] = {
            "description": f"{description} `code`: {', '.join(f'`{r}`' for r in reasons)}.",
            "headers": error_headers,
            "content": {"application/json": {"schema": _ref("RemoveBgErrors")}},
        }
    form = _ref("RemoveBgForm")
    return {
        "tags": ["remove.bg"],
        "operationId": "removebg",
        "summary": "remove.bg's API on this service: the cutout file itself.",
        "description": (
            "The same checks and pipeline as `POST /product/cutout`, with remove.bg's request and answer: the file "
            "(`Content-Type` by `format`), or with `Accept: application/json` the file in base64. A client written "
            "for remove.bg changes only its base URL."
        ),
        "security": [{"x_api_key": []}],
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": form,
                    "encoding": {"image_file": {"contentType": ", ".join([*IMAGE_MEDIA_TYPES, "application/octet-stream"])}},
                },
                "application/x-www-form-urlencoded": {"schema": form},
                "application/json": {"schema": form},
            },
        },
        "responses": {
            "200": {
                "description": "The cutout file, or `RemoveBgResult` for `Accept: application/json`.",
                "headers": headers,
                "content": {**files, "application/json": {"schema": _ref("RemoveBgResult")}},
            },
            **errors,
        },
    }


def _page(description: str, media_type: str) -> dict[str, Any]:
    return {
        "tags": ["pages"],
        "summary": description,
        "responses": {"200": {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}},
    }


def _result_parameters(cached: bool) -> list[dict[str, Any]]:
    path = [
        ("org", r"^[a-z0-9][a-z0-9_-]{0,62}$", "The organization the result belongs to."),
        ("year", r"^\d{4}$", "UTC year the result was stored."),
        ("month", r"^\d{2}$", "UTC month."),
        ("day", r"^\d{2}$", "UTC day."),
        ("name", rf"^[0-9a-f]{{32}}\.({_EXTENSIONS})$", "The result's random name."),
    ]
    if cached:
        path = [path[0], ("name", rf"^[0-9a-f]{{64}}\.({_EXTENSIONS})$", "The cached result's key.")]
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
        [
            (CutoutRequest, "validation"),
            (removebg.RemoveBgForm, "validation"),
            (CutoutResult, "serialization"),
            (ErrorBody, "serialization"),
            (Health, "serialization"),
            (RemoveBgResult, "serialization"),
            (RemoveBgErrors, "serialization"),
        ],
        ref_template=_SCHEMA_REF,
    )
    schemas = top["$defs"]
    results = {}
    for path, cached in (("/results/{org}/{year}/{month}/{day}/{name}", False), ("/results/{org}/cache/{name}", True)):
        result_get = {
            "tags": ["results"],
            "summary": "A stored result (when results are stored locally and the service serves them itself).",
            "description": "The `result_url` of a 200 points here; it carries its own signature and needs no token.",
            "parameters": _result_parameters(cached),
            "responses": {
                "200": {
                    "description": "The file, in the format asked for (an RGBA PNG by default).",
                    "headers": {"X-Request-Id": REQUEST_ID},
                    "content": {media: {"schema": {"type": "string", "contentMediaType": media}} for media in IMAGE_MEDIA_TYPES},
                },
                **_error_responses(RESULT_ERRORS),
            },
        }
        result_head = {**result_get, "summary": "The headers of a stored result, without its body."}
        result_head["responses"] = {**result_get["responses"], "200": {"description": "The result exists and its URL is valid."}}
        results[path] = {"get": result_get, "head": result_head}
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
            {"name": "remove.bg", "description": "remove.bg's API, for clients written for it."},
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
                            "headers": {"X-Request-Id": REQUEST_ID, "Server-Timing": SERVER_TIMING, "X-Cache": CACHE_STATE},
                            "content": {"application/json": {"schema": _ref("CutoutResult")}},
                        },
                        **_error_responses(CUTOUT_ERRORS),
                    },
                }
            },
            removebg.ROUTE: {"post": _removebg_operation()},
            **results,
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
                },
                "x_api_key": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Api-Key",
                    "description": "The same tokens, where remove.bg's clients send their key.",
                },
            },
        },
    }
