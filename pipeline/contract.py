"""The bodies the service answers with, as pydantic models (docs/api.md, Response and Errors).

The uploader builds the 200 body through :class:`CutoutResult`, :meth:`CutoutError.to_body`
has the shape of :class:`ErrorBody`, the OpenAPI document (:mod:`pipeline.openapi`) publishes
their JSON schemas, and the client (:mod:`pipeline.client`) parses answers with them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


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


class CutoutResult(BaseModel):
    """The 200 body of ``POST /product/cutout``."""

    result_url: str = Field(
        description="URL of the RGBA PNG cropped tight to the product; it expires (CUTOUT_RESULT_URL_TTL_S) and needs no token."
    )
    sku: str | None = Field(description="The request's `sku`, or null.")
    crop: Box = Field(description="The result's box in the input's pixel grid (after EXIF rotation).")
    source: Size = Field(description="The size of that grid: the input's size after EXIF rotation.")


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
