"""The request of ``POST /product/cutout``: parsing and validation of every field (docs/api.md, Request).

:class:`CutoutRequest` is a pydantic model: the service validates every request with it, and
the OpenAPI document (:mod:`pipeline.openapi`) publishes its JSON schema, so the contract and
the validation cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from pipeline.errors import CutoutError, bad_request

MAX_SKU_LENGTH = 128
MAX_URL_LENGTH = 4096
_TYPE_NAMES = {"string_type": "a string", "bool_type": "a boolean"}


def _empty_is_absent(value: Any) -> Any:
    return None if value == "" else value


def _null_is_false(value: Any) -> Any:
    return False if value is None else value


OptionalText = Annotated[str | None, BeforeValidator(_empty_is_absent)]
Flag = Annotated[bool, BeforeValidator(_null_is_false), WithJsonSchema({"type": ["boolean", "null"]})]


class CutoutRequest(BaseModel):
    """The JSON body of ``POST /product/cutout``. Exactly one of ``image_url`` and ``file`` is set
    once validated. Unknown fields are ignored; ``null`` (and ``""`` for the strings) is absent."""

    model_config = ConfigDict(
        extra="ignore",
        frozen=True,
        strict=True,
        title="CutoutRequest",
    )

    sku: OptionalText = Field(
        None,
        max_length=MAX_SKU_LENGTH,
        description=f"Kept with the result and echoed in the response; at most {MAX_SKU_LENGTH} printable characters. Never part of a path.",
        examples=["MUG-1"],
    )
    image_url: OptionalText = Field(
        None,
        max_length=MAX_URL_LENGTH,
        description=(
            f"http or https URL of the image, at most {MAX_URL_LENGTH} characters; used when both `image_url` and `file` "
            "are given. The host must resolve to a public address (else 400 `url_not_allowed`)."
        ),
        examples=["https://cdn.example.com/mug.jpg"],
    )
    file: OptionalText = Field(
        None,
        description="The image (JPEG, PNG or WebP) in base64; a `data:image/...;base64,` prefix and line breaks are accepted.",
    )
    force_rmbg: Flag = Field(False, description="Run background removal even when the input has an alpha channel.")
    preserve_alpha: Flag = Field(False, description="Keep the input's alpha values (no effect on an input without alpha).")
    content_moderation: Flag = Field(
        False, description="Moderate the input before it is processed and the cutout before it is stored."
    )

    @field_validator("sku")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and not value.isprintable():
            raise ValueError("not printable")
        return value

    @model_validator(mode="after")
    def _one_image(self) -> CutoutRequest:
        if self.image_url is None and self.file is None:
            # not a ValueError: pydantic lets it through as the typed error it is
            raise bad_request("missing_image", "Give the image as 'image_url' or as base64 'file'.", "image_url/file")
        if self.image_url is not None and self.file is not None:
            object.__setattr__(self, "file", None)  # image_url wins when both are given
        return self

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


def parse_fields(data: Mapping[str, Any]) -> CutoutRequest:
    """Validate the request fields with :class:`CutoutRequest`.

    Raises:
        CutoutError: 400 naming the first invalid field, or when no image is given.
    """
    try:
        return CutoutRequest.model_validate(dict(data))
    except ValidationError as exc:
        raise _first_error(exc) from None


def _first_error(exc: ValidationError) -> CutoutError:
    """The 400 of docs/api.md for the first field pydantic found invalid."""
    error = exc.errors(include_url=False, include_input=False)[0]
    name = str(error["loc"][0]) if error["loc"] else "body"
    if name == "sku" and error["type"] in ("string_too_long", "value_error"):
        return bad_request("invalid_parameter", f"'sku' must be at most {MAX_SKU_LENGTH} printable characters.", "sku")
    if name == "image_url" and error["type"] == "string_too_long":
        return bad_request("invalid_url", f"'image_url' is longer than {MAX_URL_LENGTH} characters.", "image_url")
    kind = _TYPE_NAMES.get(error["type"], "of the type the API documents")
    return bad_request("invalid_parameter", f"'{name}' must be {kind}.", name)
