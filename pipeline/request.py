"""The request of ``POST /product/cutout``: parsing and validation of every field (docs/api.md, Request)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.errors import bad_request

MAX_SKU_LENGTH = 128
MAX_URL_LENGTH = 4096
_BOOL_FIELDS = ("force_rmbg", "preserve_alpha", "content_moderation")


@dataclass(frozen=True)
class CutoutRequest:
    """A validated request. Exactly one of ``image_url`` and ``file`` is set."""

    sku: str | None = None
    image_url: str | None = None
    file: str | None = None
    force_rmbg: bool = False
    preserve_alpha: bool = False
    content_moderation: bool = False

    @property
    def source_parameter(self) -> str:
        """The field the image comes from, for error messages."""
        return "image_url" if self.image_url else "file"


def parse_body(body: bytes) -> CutoutRequest:
    """Parse a raw JSON body into a request.

    Raises:
        CutoutError: 400 for malformed JSON, a non-object body, or any invalid field.
    """
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise bad_request("malformed_json", "The request body must be a JSON object.") from None
    if not isinstance(data, dict):
        raise bad_request("malformed_json", "The request body must be a JSON object.")
    return parse_fields(data)


def _optional_str(data: Mapping[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise bad_request("invalid_parameter", f"'{name}' must be a string.", name)
    return value


def parse_fields(data: Mapping[str, Any]) -> CutoutRequest:
    """Validate the request fields (unknown fields are ignored, ``null`` means absent).

    Raises:
        CutoutError: 400 naming the first invalid field, or when no image is given.
    """
    sku = _optional_str(data, "sku")
    if sku is not None and (len(sku) > MAX_SKU_LENGTH or not sku.isprintable()):
        raise bad_request(
            "invalid_parameter",
            f"'sku' must be at most {MAX_SKU_LENGTH} printable characters.",
            "sku",
        )
    image_url = _optional_str(data, "image_url")
    file = _optional_str(data, "file")
    flags = {}
    for name in _BOOL_FIELDS:
        value = data.get(name)
        if value is None:
            value = False
        if not isinstance(value, bool):
            raise bad_request("invalid_parameter", f"'{name}' must be a boolean.", name)
        flags[name] = value
    if image_url is not None:
        if len(image_url) > MAX_URL_LENGTH:
            raise bad_request("invalid_url", f"'image_url' is longer than {MAX_URL_LENGTH} characters.", "image_url")
        file = None  # image_url wins when both are given
    elif file is None:
        raise bad_request("missing_image", "Give the image as 'image_url' or as base64 'file'.", "image_url/file")
    return CutoutRequest(sku=sku, image_url=image_url, file=file, **flags)
