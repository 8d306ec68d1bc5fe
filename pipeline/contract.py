"""The bodies the service answers with, as pydantic models (docs/api.md, Response and Errors).

Every 200 body of ``POST /product/cutout`` is built through :class:`CutoutResult`
(:func:`pipeline.cache.hit_body`, for a computed result and a cached one alike),
:meth:`CutoutError.to_body` has the shape of :class:`ErrorBody`, the remove.bg endpoint's JSON
answers are built through :class:`RemoveBgResult` and :class:`RemoveBgErrors`; the OpenAPI
document (:mod:`pipeline.openapi`) publishes their JSON schemas, and the client
(:mod:`pipeline.client`) parses answers with them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema


def _no_default(schema: dict[str, Any]) -> None:
    """Publish an optional key without ``default: null`` (it is left out, never sent as null)."""
    schema.pop("default", None)


class Box(BaseModel):
    """The cut-out box in the input's pixel grid (after EXIF rotation)."""

    left: int = Field(ge=0)
    top: int = Field(ge=0)
    width: int = Field(ge=1)
    height: int = Field(ge=1)


class Size(BaseModel):
    """An image's size in pixels."""

    width: int = Field(ge=1)
    height: int = Field(ge=1)


class Placement(BaseModel):
    """Where the product's box sits in the output file, in the file's pixels."""

    left: int = Field(ge=0, description="Column of the box's first pixel in the file.")
    top: int = Field(ge=0, description="Row of the box's first pixel in the file.")
    width: int = Field(ge=1, description="The box's width in the file.")
    height: int = Field(ge=1, description="The box's height in the file.")
    scale: float = Field(gt=0, description="Output pixels per source pixel.")
    output: Size = Field(description="The size of the whole file.")


class CutoutResult(BaseModel):
    """The 200 body of ``POST /product/cutout``: four keys, and ``placement`` when output options were given."""

    result_url: str = Field(
        description=(
            "URL of the result file: the RGBA PNG cropped tight to the product, or what the output options ask for; "
            "it expires (CUTOUT_RESULT_URL_TTL_S) and needs no token."
        )
    )
    sku: str | None = Field(description="The request's `sku`, or null.")
    crop: Box = Field(description="The result's box in the input's pixel grid (after EXIF rotation).")
    source: Size = Field(description="The size of that grid: the input's size after EXIF rotation.")
    placement: Placement | SkipJsonSchema[None] = Field(
        None,
        description=(
            "Where the product sits in the output file; present when the request gave any output option "
            "(`crop_margin`, `canvas`, `bg_color`, `format`, `channels`, `max_size`), absent otherwise."
        ),
        json_schema_extra=_no_default,
        exclude_if=lambda value: value is None,  # a request without output options gets today's four keys
    )


class ErrorDetail(BaseModel):
    """The one object inside every error body."""

    code: int = Field(description="The HTTP status.")
    reason: str = Field(description="A stable machine-readable name (docs/api.md lists them).", examples=["rate_limited"])
    message: str = Field(description="For people; safe to show as it is.")
    parameter: str | None = Field(description="The request field at fault, or null.")
    details: dict[str, Any] = Field(description="Extra public details, often empty.")


class ErrorBody(BaseModel):
    """Every error the service answers with."""

    error: ErrorDetail


class Health(BaseModel):
    """The body of ``GET /healthz``."""

    status: Literal["ok", "unavailable"]
    stages: dict[str, Literal["ready", "unavailable"]] = Field(description="Each stage of the pipeline by name.")


class RemoveBgData(BaseModel):
    """The file and the product's box in it, as ``POST /v1.0/removebg`` answers ``Accept: application/json``."""

    result_b64: str = Field(description="The file (PNG, JPEG or WebP, as asked) in base64.")
    foreground_top: int = Field(ge=0, description="Row of the product box's first pixel in the file.")
    foreground_left: int = Field(ge=0, description="Column of the product box's first pixel in the file.")
    foreground_width: int = Field(ge=1, description="The product box's width in the file.")
    foreground_height: int = Field(ge=1, description="The product box's height in the file.")


class RemoveBgResult(BaseModel):
    """The JSON 200 body of ``POST /v1.0/removebg``."""

    data: RemoveBgData


class RemoveBgErrorSource(BaseModel):
    """The request field an error is about."""

    parameter: str


class RemoveBgError(BaseModel):
    """One error in remove.bg's shape."""

    title: str = Field(description="For people; safe to show as it is.")
    code: str = Field(description="Our stable `reason` (docs/api.md lists them).", examples=["invalid_parameter"])
    source: RemoveBgErrorSource | SkipJsonSchema[None] = Field(
        None,
        description="The field at fault; absent when the error is about no one field.",
        json_schema_extra=_no_default,
        exclude_if=lambda value: value is None,
    )


class RemoveBgErrors(BaseModel):
    """Every error of ``POST /v1.0/removebg``: remove.bg's shape, always exactly one error."""

    errors: list[RemoveBgError] = Field(min_length=1, max_length=1)
