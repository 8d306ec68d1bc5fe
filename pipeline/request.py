"""The request of ``POST /product/cutout``: parsing and validation of every field (docs/api.md, Request).

:class:`CutoutRequest` is a pydantic model: the service validates every request with it, and
the OpenAPI document (:mod:`pipeline.openapi`) publishes its JSON schema, so the contract and
the validation cannot drift apart.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from pipeline.errors import CutoutError, bad_request

MAX_SKU_LENGTH = 128
MAX_URL_LENGTH = 4096
_TYPE_NAMES = {"string_type": "a string", "bool_type": "a boolean"}
# Output options (docs/api.md, Output options): bounds that keep one request's output bounded.
MAX_MARGIN_PX = 2048
MAX_MARGIN_PERCENT = 100.0
MAX_CANVAS_SIDE = 8192
MAX_OUTPUT_SIDE = 8192
FORMATS = ("png", "webp", "jpg")
CHANNELS = ("rgba", "alpha")
POSITIONS = ("center", "bottom")
QUALITIES = ("fast", "best")
_MARGIN = re.compile(r"^(\d{1,5}(?:\.\d{1,3})?)(px|%)$")
_CANVAS_SCHEMA = {
    "type": ["object", "null"],
    "required": ["width", "height"],
    "additionalProperties": False,
    "properties": {
        "width": {"type": "integer", "minimum": 1, "maximum": 8192},
        "height": {"type": "integer", "minimum": 1, "maximum": 8192},
        "position": {"enum": ["center", "bottom"], "default": "center"},
        "padding": {"type": "integer", "minimum": 0, "default": 0},
        "upscale": {"type": "boolean", "default": False},
    },
}
_HEX_COLOR = re.compile(r"^#?([0-9a-fA-F]{3}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})$")
# What parse_margin and parse_color accept, as JSON schemas (the remove.bg endpoint publishes them too).
MARGIN_SCHEMA = {"type": ["string", "integer", "null"], "pattern": r"^\d+(\.\d+)?(px|%)$"}
COLOR_SCHEMA = {"type": ["string", "null"], "pattern": _HEX_COLOR.pattern}


@dataclass(frozen=True)
class Margin:
    """Transparent space around the product box: ``value`` pixels, or percent of the box's side."""

    value: float
    unit: Literal["px", "%"]

    def pixels(self, width: int, height: int) -> tuple[int, int]:
        """The (horizontal, vertical) margin in pixels for a product box of ``width`` x ``height``."""
        if self.unit == "px":
            return int(self.value), int(self.value)
        return round(width * self.value / 100), round(height * self.value / 100)


@dataclass(frozen=True)
class Canvas:
    """A fixed-size output with the product placed on it.

    Attributes:
        width: Canvas width in pixels.
        height: Canvas height in pixels.
        position: ``center``, or ``bottom`` (centred horizontally, resting on the bottom padding).
        padding: Pixels kept free on every side.
        upscale: Whether a product smaller than the free area is enlarged to fill it.
    """

    width: int
    height: int
    position: Literal["center", "bottom"] = "center"
    padding: int = 0
    upscale: bool = False


@dataclass(frozen=True)
class Frame:
    """The output keeps the source image's frame instead of the product box (the remove.bg default).

    Attributes:
        position: ``original`` (the product where it was) or ``center``.
        scale: The product box fits this fraction of the frame (then centred), or None (as it was).
    """

    position: Literal["original", "center"] = "original"
    scale: float | None = None


@dataclass(frozen=True)
class OutputOptions:
    """What the result file looks like; the defaults give the tight RGBA PNG of docs/api.md.

    Attributes:
        crop_margin: Space around the product box, or None.
        canvas: A fixed-size canvas, or None (the output is the product box plus margin).
        bg_color: RGBA background, or None (transparent).
        format: ``png``, ``webp`` or ``jpg``.
        channels: ``rgba``, or ``alpha`` (the mask alone, as greyscale).
        max_size: Longest side of the output at most this (downscale only), or None.
        max_pixels: The output at most this many pixels (downscale only), or None. Not a JSON
            field: the remove.bg endpoint's ``size``.
        frame: Keep the source's frame (not a JSON field: the remove.bg endpoint's ``crop=false``).
    """

    crop_margin: Margin | None = None
    canvas: Canvas | None = None
    bg_color: tuple[int, int, int, int] | None = None
    format: Literal["png", "webp", "jpg"] = "png"
    channels: Literal["rgba", "alpha"] = "rgba"
    max_size: int | None = None
    max_pixels: int | None = None
    frame: Frame | None = None

    @property
    def is_default(self) -> bool:
        """Whether nothing was asked beyond today's tight PNG (the answer then has no ``placement``)."""
        return self == OutputOptions()


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
    # Output options (docs/api.md, Output options): validated by parse_output in _one_image, which
    # names the field (or the member of canvas) at fault; the types here are what the schema publishes.
    crop_margin: Annotated[Any, WithJsonSchema(MARGIN_SCHEMA)] = Field(
        None,
        description=f'Transparent space around the product\'s box: pixels ("12px", or a number; up to {MAX_MARGIN_PX}) or percent of the box ("5%", up to 100).',
        examples=["12px", "5%"],
    )
    canvas: Annotated[Any, WithJsonSchema(_CANVAS_SCHEMA)] = Field(
        None, description="A fixed-size output with the product placed on it, scaled down to fit (never up unless `upscale`)."
    )
    bg_color: Annotated[Any, WithJsonSchema(COLOR_SCHEMA)] = Field(
        None, description="A background colour instead of transparency: #rgb, #rrggbb or #rrggbbaa.", examples=["#ffffff"]
    )
    format: Annotated[Any, WithJsonSchema({"enum": [*FORMATS, None]})] = Field(
        None, description="png (default), webp or jpg (no transparency: the background is `bg_color`, or white)."
    )
    channels: Annotated[Any, WithJsonSchema({"enum": [*CHANNELS, None]})] = Field(
        None, description="rgba (default), or alpha: the mask alone, as greyscale."
    )
    max_size: Annotated[Any, WithJsonSchema({"type": ["integer", "null"], "minimum": 1, "maximum": MAX_OUTPUT_SIDE})] = Field(
        None, description="The output's longest side at most this many pixels; only ever scales down."
    )
    quality: Annotated[Any, WithJsonSchema({"enum": [*QUALITIES, None]})] = Field(
        None,
        description=(
            "Edge quality: `fast`, or `best` (the model also runs on the mirrored image, and closed-form matting "
            "re-estimates the alpha along the product's edge: just under 2x the CPU of `fast` for the mask and alpha, docs/quality.md). "
            "Absent: the service's `CUTOUT_DEFAULT_QUALITY` (`fast` as shipped)."
        ),
        examples=["best"],
    )
    _output: OutputOptions = PrivateAttr(default_factory=OutputOptions)

    @field_validator("sku")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and not value.isprintable():
            raise ValueError("not printable")
        return value

    @model_validator(mode="after")
    def _one_image(self) -> CutoutRequest:
        fields = {"crop_margin": self.crop_margin, "canvas": self.canvas, "bg_color": self.bg_color}
        fields.update(format=self.format, channels=self.channels, max_size=self.max_size)
        self._output = parse_output(fields)  # a CutoutError names the field
        quality = _empty_is_absent(self.quality)
        object.__setattr__(self, "quality", _choice({"quality": quality}, "quality", QUALITIES))
        if self.image_url is None and self.file is None:
            # not a ValueError: pydantic lets it through as the typed error it is
            raise bad_request("missing_image", "Give the image as 'image_url' or as base64 'file'.", "image_url/file")
        if self.image_url is not None and self.file is not None:
            object.__setattr__(self, "file", None)  # image_url wins when both are given
        return self

    @property
    def output(self) -> OutputOptions:
        """The output options (all absent: today's tight RGBA PNG)."""
        return self._output

    def with_output(self, output: OutputOptions) -> CutoutRequest:
        """A copy with other output options (the remove.bg endpoint maps its own onto these)."""
        copy = self.model_copy()
        copy._output = output
        return copy

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


def _invalid(name: str, message: str) -> Exception:
    return bad_request("invalid_parameter", message, name)


def _int_field(data: Mapping[str, Any], name: str, low: int, high: int, label: str | None = None) -> int | None:
    value = data.get(name)
    label = label or name
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _invalid(label, f"'{label}' must be an integer from {low} to {high}.")
    return value


def parse_margin(value: Any, name: str = "crop_margin") -> Margin | None:
    """``"12px"``, ``"5%"`` or a plain number of pixels; None for absent.

    Raises:
        CutoutError: 400 naming ``name`` for anything else or a value over the bounds.
    """
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = f"{value}px"
    match = _MARGIN.match(value) if isinstance(value, str) else None
    if match is None:
        raise _invalid(name, f'\'{name}\' must be pixels like "12px" or a percentage of the product box like "5%".')
    number, unit = float(match.group(1)), match.group(2)
    if unit == "px" and (number != int(number) or number > MAX_MARGIN_PX):
        raise _invalid(name, f"'{name}' in pixels must be a whole number up to {MAX_MARGIN_PX}.")
    if unit == "%" and number > MAX_MARGIN_PERCENT:
        raise _invalid(name, f"'{name}' in percent must be at most {MAX_MARGIN_PERCENT:g}.")
    return Margin(number, unit)  # type: ignore[arg-type]


def parse_color(value: Any, name: str = "bg_color") -> tuple[int, int, int, int] | None:
    """A hex colour (``#rgb``, ``#rrggbb`` or ``#rrggbbaa``, the ``#`` optional) as RGBA; None for absent.

    Raises:
        CutoutError: 400 naming ``name``.
    """
    if value is None or value == "":
        return None
    match = _HEX_COLOR.match(value) if isinstance(value, str) else None
    if match is None:
        raise _invalid(name, f'\'{name}\' must be a hex colour like "#ffffff" or "#ffffff80".')
    digits = match.group(1)
    if len(digits) == 3:
        digits = "".join(c * 2 for c in digits)
    if len(digits) == 6:
        digits += "ff"
    r, g, b, a = (int(digits[i : i + 2], 16) for i in range(0, 8, 2))
    return r, g, b, a


def _choice(data: Mapping[str, Any], name: str, choices: tuple[str, ...]) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or value.lower() not in choices:
        raise _invalid(name, f"'{name}' must be one of {', '.join(choices)}.")
    return value.lower()


def parse_canvas(value: Any) -> Canvas | None:
    """The ``canvas`` object; None for absent.

    Raises:
        CutoutError: 400 naming the member at fault (``canvas.width``...).
    """
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _invalid("canvas", "'canvas' must be an object with 'width' and 'height'.")
    unknown = sorted(set(value) - {"width", "height", "position", "padding", "upscale"})
    if unknown:
        raise _invalid(f"canvas.{unknown[0]}", f"'canvas' has no member '{unknown[0]}'.")
    width = _int_field(value, "width", 1, MAX_CANVAS_SIDE, "canvas.width")
    height = _int_field(value, "height", 1, MAX_CANVAS_SIDE, "canvas.height")
    if width is None or height is None:
        missing = "canvas.width" if width is None else "canvas.height"
        raise _invalid(missing, f"'{missing}' is required.")
    padding = _int_field(value, "padding", 0, MAX_CANVAS_SIDE, "canvas.padding") or 0
    if 2 * padding >= min(width, height):
        raise _invalid("canvas.padding", "'canvas.padding' must leave room for the product (less than half the smaller side).")
    position = _choice({"canvas.position": value.get("position")}, "canvas.position", POSITIONS) or "center"
    upscale = value.get("upscale", False)
    if upscale is None:
        upscale = False
    if not isinstance(upscale, bool):
        raise _invalid("canvas.upscale", "'canvas.upscale' must be a boolean.")
    return Canvas(width, height, position, padding, upscale)  # type: ignore[arg-type]


def parse_output(data: Mapping[str, Any]) -> OutputOptions:
    """The output options of a request (all absent: today's tight RGBA PNG).

    Raises:
        CutoutError: 400 naming the field for an invalid value or combination.
    """
    margin = parse_margin(data.get("crop_margin"))
    canvas = parse_canvas(data.get("canvas"))
    bg_color = parse_color(data.get("bg_color"))
    fmt = _choice(data, "format", FORMATS) or "png"
    channels = _choice(data, "channels", CHANNELS) or "rgba"
    max_size = _int_field(data, "max_size", 1, MAX_OUTPUT_SIDE)
    if channels == "alpha" and bg_color is not None:
        raise _invalid("bg_color", "'bg_color' cannot be combined with 'channels': \"alpha\" (the mask has no colour).")
    if canvas is not None and max_size is not None:
        raise _invalid("max_size", "'max_size' cannot be combined with 'canvas' (the canvas fixes the size).")
    return OutputOptions(margin, canvas, bg_color, fmt, channels, max_size)  # type: ignore[arg-type]
