"""remove.bg's API (``POST /v1.0/removebg``) on our pipeline: parsing its bodies, mapping its
parameters onto ours, and shaping its answers and errors (docs/api.md, remove.bg-compatible endpoint).

The request runs through the same checks and stages as ``POST /product/cutout``: the token,
the rate limit, admission, the body limit, SSRF rules, image limits, moderation. Only the
surface differs: the key in ``X-Api-Key``, a multipart, urlencoded or JSON body, the image's
bytes as the answer (or JSON with base64 for ``Accept: application/json``), the subject's box in
``X-Foreground-*`` headers, and errors as ``{"errors": [{"title", "code"}]}``.
"""

from __future__ import annotations

import base64
import json
import math
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pipeline.contract import RemoveBgData, RemoveBgError, RemoveBgErrors, RemoveBgResult
from pipeline.errors import CutoutError, bad_request
from pipeline.request import (
    COLOR_SCHEMA,
    MARGIN_SCHEMA,
    MAX_URL_LENGTH,
    CutoutRequest,
    Frame,
    OutputOptions,
    parse_color,
    parse_fields,
    parse_margin,
)

ROUTE = "/v1.0/removebg"
KEY_HEADER = "x-api-key"
# remove.bg's sizes as the largest output in pixels (None: the source's own resolution).
SIZES: dict[str, int | None] = {
    "preview": 250_000,
    "small": 250_000,
    "regular": 250_000,
    "medium": 1_500_000,
    "hd": 4_000_000,
    "full": None,
    "4k": None,
    "50mp": None,
    "auto": None,
}
TYPES = ("auto", "person", "product", "car", "animal", "graphic", "transportation", "other")
FORMATS = ("auto", "png", "jpg", "webp")
REFUSED_FORMATS = ("zip",)
CHANNELS = ("rgba", "alpha")
POSITIONS = ("original", "center")
BOOLEANS = {"true": True, "1": True, "false": False, "0": False}
WHOLE_IMAGE = "0% 0% 100% 100%"
MAX_FIELDS = 64
REFUSED = ("bg_image_url", "bg_image_file")
# remove.bg answers some failures with other statuses than ours.
STATUS_MAP = {401: 403, 415: 400, 422: 400, 460: 400}


@dataclass(frozen=True)
class Reply:
    """An HTTP answer for the ingress to send."""

    status: int
    headers: dict[str, str]
    body: bytes
    media_type: str


def _json(status: int, body: dict[str, Any], headers: dict[str, str]) -> Reply:
    return Reply(status, headers, json.dumps(body, separators=(",", ":")).encode(), "application/json")


def _param(description: str, schema: dict[str, Any]) -> Any:
    """A field of :class:`RemoveBgForm`: what the parser reads, and the schema the API publishes for it."""
    return Field(None, description=description, json_schema_extra=schema)


_ANY_VALUE = {"type": ["string", "boolean", "number", "null"]}


class RemoveBgForm(BaseModel):
    """The fields of `POST /v1.0/removebg`, in any of its three body types. Unknown fields are
    ignored; an absent or empty field takes its default."""

    # to_request reads every field through this model and checks its value there, so the OpenAPI
    # document (which publishes this model's schema) lists exactly the fields that are read.
    model_config = ConfigDict(extra="ignore", frozen=True)

    image_file: Any = _param(
        "The image (JPEG, PNG or WebP): a file part of a multipart/form-data body; in a JSON or urlencoded body, base64.",
        {"type": ["string", "null"]},
    )
    image_file_b64: Any = _param("The image in base64.", {"type": ["string", "null"]})
    image_url: Any = _param(
        f"http or https URL of the image, at most {MAX_URL_LENGTH} characters; the host must resolve to a public address.",
        {"type": ["string", "null"], "maxLength": MAX_URL_LENGTH},
    )
    size: Any = _param(
        "The output's largest pixel count: preview, small, regular 0.25 MP; medium 1.5 MP; hd 4 MP; full, 4k, 50mp, auto "
        "the source's resolution. Never enlarges.",
        {"enum": [*SIZES, None], "default": "preview"},
    )
    type: Any = _param(
        "Accepted and ignored (one model cuts out whatever is in front); answered in `X-Type`.",
        {"enum": [*TYPES, None], "default": "auto"},
    )
    format: Any = _param(
        "auto (PNG, or JPEG when an opaque `bg_color` leaves nothing transparent), png, jpg or webp; zip is refused (400).",
        {"enum": [*FORMATS, None], "default": "auto"},
    )
    roi: Any = _param("Only the whole image is supported; any other region is refused (400).", {"enum": [WHOLE_IMAGE, None]})
    crop: Any = _param(
        "true: crop to the product; false (the default): keep the source's frame with the product where it was.",
        {"enum": [*BOOLEANS, True, False, None], "default": False},
    )
    crop_margin: Any = _param(
        'Space around the product with `crop=true` ("12px" or "5%" of the box); ignored without.', MARGIN_SCHEMA
    )
    bg_color: Any = _param("A hex background colour (#rgb, #rrggbb, #rrggbbaa); ignored with `channels=alpha`.", COLOR_SCHEMA)
    channels: Any = _param("rgba, or alpha: the mask alone.", {"enum": [*CHANNELS, None], "default": "rgba"})
    position: Any = _param("With `crop=false`: original or center.", {"enum": [*POSITIONS, None], "default": "original"})
    scale: Any = _param(
        "With `crop=false`: original, or 10% to 100% (the product fits that share of the frame, centred).",
        {"type": ["string", "null"], "pattern": r"^(original|\d{1,3}(\.\d+)?%)$", "default": "original"},
    )
    type_level: Any = _param("Accepted and ignored.", _ANY_VALUE)
    add_shadow: Any = _param("Accepted and ignored.", _ANY_VALUE)
    semitransparency: Any = _param("Accepted and ignored (edges are always soft where the model is unsure).", _ANY_VALUE)
    shadow_type: Any = _param("Accepted and ignored.", _ANY_VALUE)
    shadow_opacity: Any = _param("Accepted and ignored.", _ANY_VALUE)
    bg_image_url: Any = _param("Refused (400) unless empty; use `bg_color`.", {"type": ["string", "null"], "maxLength": 0})
    bg_image_file: Any = _param("Refused (400) unless empty; use `bg_color`.", {"type": ["string", "null"], "maxLength": 0})


@dataclass(frozen=True)
class RemoveBgRequest:
    """A parsed remove.bg request.

    Attributes:
        cutout: The equivalent request to our pipeline.
        type: The ``type`` the client gave (answered in ``X-Type``; ``product`` for ``auto``).
    """

    cutout: CutoutRequest
    type: str = "auto"


def _fail(field: str, message: str) -> CutoutError:
    return bad_request("invalid_parameter", message, field)


def _form_fields(body: bytes) -> dict[str, Any]:
    try:
        pairs = urllib.parse.parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_FIELDS
        )
    except (UnicodeDecodeError, ValueError):
        raise bad_request("malformed_body", "The urlencoded body cannot be read.") from None
    return dict(pairs)


def _multipart_fields(content_type: str, body: bytes) -> dict[str, Any]:
    """The parts of a multipart/form-data body: text fields as str, ``image_file`` as bytes."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise bad_request("malformed_body", "The multipart body has no boundary.")
    fields: dict[str, Any] = {}
    state: dict[str, Any] = {"headers": {}, "field": b"", "value": b"", "data": []}

    def on_part_begin() -> None:
        state.update(headers={}, data=[])

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].decode("latin-1").lower()] = state["value"].decode("latin-1")
        state.update(field=b"", value=b"")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["data"].append(data[start:end])

    def on_part_end() -> None:
        if len(fields) >= MAX_FIELDS:
            raise bad_request("malformed_body", "The multipart body has too many parts.")
        _, disposition = parse_options_header(state["headers"].get("content-disposition", ""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        value = b"".join(state["data"])
        if name == "image_file":
            fields[name] = value
        elif name:
            try:
                fields[name] = value.decode("utf-8")
            except UnicodeDecodeError:
                raise _fail(name, f"'{name}' must be UTF-8 text.") from None

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    try:
        parser.write(body)
        parser.finalize()
    except CutoutError:
        raise
    except Exception:
        raise bad_request("malformed_body", "The multipart body cannot be read.") from None
    return fields


def read_fields(content_type: str, body: bytes) -> dict[str, Any]:
    """The body's fields, by its Content-Type (multipart/form-data, urlencoded or JSON).

    Raises:
        CutoutError: 400 for a body that cannot be read; 415 for another Content-Type.
    """
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "multipart/form-data":
        return _multipart_fields(content_type, body)
    if kind == "application/x-www-form-urlencoded":
        return _form_fields(body)
    if kind == "application/json":
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            raise bad_request("malformed_json", "The request body must be a JSON object.") from None
        if not isinstance(data, dict):
            raise bad_request("malformed_json", "The request body must be a JSON object.")
        return data
    raise CutoutError(
        415,
        "unsupported_body",
        "Send multipart/form-data, application/x-www-form-urlencoded or application/json.",
        None,
    )


def _text(value: Any, name: str, default: str) -> str:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return "true" if value else "false"
    if not isinstance(value, str | int | float):
        raise _fail(name, f"'{name}' must be a string.")
    return str(value).strip().lower()


def _choice(value: Any, name: str, choices: tuple[str, ...] | dict[str, Any], default: str) -> str:
    text = _text(value, name, default)
    if text not in choices:
        raise _fail(name, f"'{name}' must be one of {', '.join(choices)}.")
    return text


def _scale(value: str) -> float | None:
    if value == "original":
        return None
    number = value.removesuffix("%")
    try:
        percent = float(number)
    except ValueError:
        percent = math.nan
    if not value.endswith("%") or not 10 <= percent <= 100:
        raise _fail("scale", "'scale' must be \"original\" or a percentage from 10% to 100%.")
    return percent / 100


def to_request(fields: dict[str, Any]) -> RemoveBgRequest:
    """Map remove.bg's fields onto our request (each read through :class:`RemoveBgForm`).

    Raises:
        CutoutError: 400 naming the field for an invalid or refused value.
    """
    form = RemoveBgForm.model_validate(fields)
    for name in REFUSED:
        if getattr(form, name) not in (None, ""):
            raise _fail(name, f"'{name}' is not supported by this service; use 'bg_color'.")
    given = {"image_file": form.image_file, "image_file_b64": form.image_file_b64, "image_url": form.image_url}
    sources = [name for name, value in given.items() if value not in (None, "", b"")]
    if len(sources) > 1:
        raise _fail(sources[1], "Give exactly one of 'image_file', 'image_file_b64' and 'image_url'.")
    if not sources:
        raise bad_request("missing_image", "Give the image as 'image_file', 'image_file_b64' or 'image_url'.", "image_file")
    if form.image_file is not None and not isinstance(form.image_file, bytes | str):
        raise _fail("image_file", "'image_file' must be a file.")
    size = _choice(form.size, "size", SIZES, "preview")
    kind = _choice(form.type, "type", TYPES, "auto")
    if _text(form.format, "format", "auto") in REFUSED_FORMATS:
        raise _fail("format", "'format': \"zip\" is not supported by this service; use png, or jpg with channels=alpha.")
    fmt = _choice(form.format, "format", FORMATS, "auto")
    if _text(form.roi, "roi", WHOLE_IMAGE).split() != WHOLE_IMAGE.split():
        raise _fail("roi", "'roi' other than the whole image is not supported by this service.")
    crop = BOOLEANS.get(_text(form.crop, "crop", "false"))
    if crop is None:
        raise _fail("crop", "'crop' must be true or false.")
    channels = _choice(form.channels, "channels", CHANNELS, "rgba")
    color = parse_color(form.bg_color or None)
    if color is not None and channels == "alpha":
        color = None  # remove.bg returns the mask and leaves the colour out
    position = _text(form.position, "position", "original")
    if position not in POSITIONS:
        raise _fail("position", "'position' must be original or center (other positions are not supported).")
    scale = _scale(_text(form.scale, "scale", "original"))
    frame = None if crop else Frame("center" if scale is not None else position, scale)  # type: ignore[arg-type]
    margin = parse_margin(form.crop_margin or None) if crop else None
    if fmt == "auto":
        fmt = "jpg" if color is not None and color[3] == 255 and channels == "rgba" else "png"
    output = OutputOptions(
        crop_margin=margin,
        bg_color=color,
        format=fmt,  # type: ignore[arg-type]
        channels=channels,  # type: ignore[arg-type]
        max_pixels=SIZES[size],
        frame=frame,
    )
    if isinstance(form.image_file, bytes):
        file = base64.b64encode(form.image_file).decode("ascii")
    else:
        file = form.image_file or form.image_file_b64 or None
    cutout = parse_fields({"image_url": form.image_url or None, "file": file})
    return RemoveBgRequest(cutout.with_output(output), kind)


def parse(content_type: str, body: bytes) -> RemoveBgRequest:
    """Read and map a remove.bg request body.

    Raises:
        CutoutError: 400 or 415 naming what is wrong.
    """
    return to_request(read_fields(content_type, body))


def _headers(result: dict[str, Any], kind: str, request_id: str | None, cache: str | None) -> dict[str, str]:
    place = result["placement"]
    headers = {
        "X-Width": str(place["output"]["width"]),
        "X-Height": str(place["output"]["height"]),
        "X-Foreground-Top": str(place["top"]),
        "X-Foreground-Left": str(place["left"]),
        "X-Foreground-Width": str(place["width"]),
        "X-Foreground-Height": str(place["height"]),
        "X-Type": "product" if kind == "auto" else kind,
    }
    if cache:
        headers["X-Cache"] = cache
    if request_id:
        headers["X-Request-Id"] = request_id
    return headers


def answer(
    parsed: RemoveBgRequest, result: dict[str, Any], accept: str, rpm: int | None, cache: str | None, request_id: str | None
) -> Reply:
    """The 200 answer: the file, or ``{"data": {"result_b64", "foreground_*"}}`` for ``Accept: application/json``."""
    headers = _headers(result, parsed.type, request_id, cache)
    if rpm:
        headers["X-RateLimit-Limit"] = str(rpm)
    data: bytes = result["data"]
    if "application/json" in accept.lower():
        place = result["placement"]
        body = RemoveBgResult(
            data=RemoveBgData(
                result_b64=base64.b64encode(data).decode("ascii"),
                foreground_top=place["top"],
                foreground_left=place["left"],
                foreground_width=place["width"],
                foreground_height=place["height"],
            )
        )
        return _json(200, body.model_dump(), headers)
    media = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}[parsed.cutout.output.format]
    return Reply(200, headers, data, media)


def error_body(error: CutoutError) -> dict[str, Any]:
    """remove.bg's error shape, :class:`pipeline.contract.RemoveBgErrors`: ``{"errors": [{"title", "code"}]}``
    (and the field at fault in ``source``)."""
    source = {"parameter": error.parameter} if error.parameter else None
    entry = RemoveBgError(title=error.message, code=error.reason, source=source)
    return RemoveBgErrors(errors=[entry]).model_dump()


def error_response(error: CutoutError, rpm: int | None, request_id: str | None, now: float | None = None) -> Reply:
    """An error in remove.bg's shape and statuses, with its rate-limit headers on a 429."""
    headers = {"X-Request-Id": request_id} if request_id else {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    if error.status == 429 and rpm:
        now = time.time() if now is None else now
        headers.update(
            {
                "X-RateLimit-Limit": str(rpm),
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(int(now) + (error.retry_after or 1)),
            }
        )
    return _json(STATUS_MAP.get(error.status, error.status), error_body(error), headers)
