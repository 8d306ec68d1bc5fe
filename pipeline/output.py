"""The output options of docs/api.md: from the tight RGBA cutout to the file the client asked for.

Pure image operations, in this order: a margin around the product box (``crop_margin``), a
fixed-size canvas the framed product is scaled to fit (``canvas``) or a cap on the longest side
(``max_size``), then the mask alone (``channels: alpha``) or the cutout over a colour
(``bg_color``; ``jpg`` has no transparency, so white when none is given), then the encoding
(``png``, ``webp``, ``jpg``). Scaling works on premultiplied colour, so no dark or coloured
fringe grows out of the transparent pixels, which stay RGB 0.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image

from pipeline import imageio
from pipeline.errors import bad_request
from pipeline.request import Frame, OutputOptions

# The largest output a request may ask for (a margin or canvas can make the output larger than the input).
MAX_OUTPUT_PIXELS = 64 * 1024 * 1024
JPEG_QUALITY = 90
WEBP_QUALITY = 90
WHITE = (255, 255, 255, 255)
CONTENT_TYPES = {"png": "image/png", "webp": "image/webp", "jpg": "image/jpeg"}


@dataclass(frozen=True)
class Placement:
    """Where the product box sits in the output, in output pixels.

    Attributes:
        left: Column of the box's first pixel.
        top: Row of the box's first pixel.
        width: The box's width after scaling.
        height: The box's height after scaling.
        scale: Output pixels per source pixel.
        output_width: Width of the whole output.
        output_height: Height of the whole output.
    """

    left: int
    top: int
    width: int
    height: int
    scale: float
    output_width: int
    output_height: int

    def as_dict(self) -> dict[str, Any]:
        """JSON form of the response's ``placement`` (docs/api.md)."""
        return {
            "left": self.left,
            "top": self.top,
            "width": self.width,
            "height": self.height,
            "scale": round(self.scale, 6),
            "output": {"width": self.output_width, "height": self.output_height},
        }


@dataclass(frozen=True)
class Rendered:
    """An encoded output file.

    Attributes:
        data: The file's bytes.
        format: ``png``, ``webp`` or ``jpg`` (also the file extension).
        placement: Where the product sits in it.
    """

    data: bytes
    format: str
    placement: Placement

    @property
    def content_type(self) -> str:
        """The file's media type."""
        return CONTENT_TYPES[self.format]


def layout(
    width: int, height: int, options: OutputOptions, box: tuple[int, int] = (0, 0), source: tuple[int, int] | None = None
) -> Placement:
    """Where a ``width`` x ``height`` product box goes in the output, before any pixel is touched.

    Args:
        box: (left, top) of the product box in the source (used by ``frame``).
        source: (width, height) of the source (used by ``frame``).

    Raises:
        CutoutError: 400 naming ``crop_margin`` when the output would be over
            :data:`MAX_OUTPUT_PIXELS`.
    """
    mx, my = options.crop_margin.pixels(width, height) if options.crop_margin else (0, 0)
    framed_w, framed_h = width + 2 * mx, height + 2 * my
    if options.frame is not None and source is not None:
        return _frame_layout(width, height, options, options.frame, box, source)
    canvas = options.canvas
    if canvas is not None:
        free_w, free_h = canvas.width - 2 * canvas.padding, canvas.height - 2 * canvas.padding
        scale = min(free_w / framed_w, free_h / framed_h)
        if scale > 1 and not canvas.upscale:
            scale = 1.0
        out_w, out_h = canvas.width, canvas.height
        box_w, box_h = _scaled(width, scale, free_w), _scaled(height, scale, free_h)
        frame_w, frame_h = framed_w * scale, framed_h * scale
        left = math.floor((out_w - frame_w) / 2 + mx * scale)
        if canvas.position == "bottom":
            top = math.floor(out_h - canvas.padding - frame_h + my * scale)
        else:
            top = math.floor((out_h - frame_h) / 2 + my * scale)
        left, top = min(max(left, 0), out_w - box_w), min(max(top, 0), out_h - box_h)
        return Placement(left, top, box_w, box_h, scale, out_w, out_h)
    scale = _cap(framed_w, framed_h, options)
    out_w, out_h = max(1, round(framed_w * scale)), max(1, round(framed_h * scale))
    if out_w * out_h > MAX_OUTPUT_PIXELS:
        raise bad_request(
            "invalid_parameter",
            f"With this 'crop_margin' the output would be over {MAX_OUTPUT_PIXELS} pixels.",
            "crop_margin",
        )
    box_w, box_h = _scaled(width, scale, out_w), _scaled(height, scale, out_h)
    left = min(round(mx * scale), out_w - box_w)
    top = min(round(my * scale), out_h - box_h)
    return Placement(left, top, box_w, box_h, scale, out_w, out_h)


def _cap(width: float, height: float, options: OutputOptions) -> float:
    """The downscale factor ``max_size`` and ``max_pixels`` ask of a ``width`` x ``height`` output (at most 1)."""
    scale = 1.0
    if options.max_size is not None and max(width, height) > options.max_size:
        scale = options.max_size / max(width, height)
    if options.max_pixels is not None and width * height * scale * scale > options.max_pixels:
        scale = math.sqrt(options.max_pixels / (width * height))
    return scale


def _frame_layout(
    width: int, height: int, options: OutputOptions, frame: Frame, box: tuple[int, int], source: tuple[int, int]
) -> Placement:
    scale = _cap(source[0], source[1], options)
    out_w, out_h = max(1, round(source[0] * scale)), max(1, round(source[1] * scale))
    product = scale
    if frame.scale is not None:
        product = scale * min(frame.scale * source[0] / width, frame.scale * source[1] / height)
    box_w, box_h = _scaled(width, product, out_w), _scaled(height, product, out_h)
    if frame.position == "original" and frame.scale is None:
        left, top = round(box[0] * scale), round(box[1] * scale)
    else:
        left, top = (out_w - box_w) // 2, (out_h - box_h) // 2
    left, top = min(max(left, 0), out_w - box_w), min(max(top, 0), out_h - box_h)
    return Placement(left, top, box_w, box_h, product, out_w, out_h)


def _scaled(side: int, scale: float, room: int) -> int:
    return min(room, max(1, round(side * scale)))


def resize_rgba(rgba: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize straight-alpha RGBA through premultiplied colour (area filter down, bilinear up)."""
    if rgba.shape[1] == width and rgba.shape[0] == height:
        return rgba
    shrinking = width < rgba.shape[1] or height < rgba.shape[0]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    alpha = rgba[..., 3:4].astype(np.float32)
    premultiplied = np.concatenate((rgba[..., :3].astype(np.float32) * (alpha / 255.0), alpha), axis=2)
    out = cv2.resize(premultiplied, (width, height), interpolation=interpolation)
    a = out[..., 3:4]
    rgb = np.where(a > 0, out[..., :3] * 255.0 / np.maximum(a, 1e-6), 0.0)
    result = np.concatenate((rgb, a), axis=2)
    result = np.clip(np.rint(result), 0, 255).astype(np.uint8)
    result[result[..., 3] == 0, :3] = 0
    return result


def over_color(rgba: np.ndarray, color: tuple[int, int, int, int]) -> np.ndarray:
    """``rgba`` composited over a flat colour (the "over" operator, straight alpha); RGBA out."""
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    bg_a = color[3] / 255.0
    bg = np.asarray(color[:3], np.float32)
    out_a = a + bg_a * (1.0 - a)
    rgb = (rgba[..., :3].astype(np.float32) * a + bg * bg_a * (1.0 - a)) / np.maximum(out_a, 1e-6)
    out = np.concatenate((rgb, out_a * 255.0), axis=2)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def compose_output(
    rgba: np.ndarray, options: OutputOptions, box: tuple[int, int] = (0, 0), source: tuple[int, int] | None = None
) -> tuple[np.ndarray, Placement]:
    """The output pixels: (H, W) greyscale for ``channels: alpha``, (H, W, 3) for ``jpg``, else (H, W, 4).

    Args:
        rgba: The tight (h, w, 4) uint8 cutout.
        options: The request's output options.
        box: (left, top) of the cutout in the source.
        source: (width, height) of the source.
    """
    place = layout(rgba.shape[1], rgba.shape[0], options, box, source)
    product = resize_rgba(rgba, place.width, place.height)
    out = np.zeros((place.output_height, place.output_width, 4), np.uint8)
    out[place.top : place.top + place.height, place.left : place.left + place.width] = product
    if options.channels == "alpha":
        return np.ascontiguousarray(out[..., 3]), place
    color = options.bg_color
    if options.format == "jpg":
        color = WHITE if color is None else tuple(over_color(np.asarray([[color]], np.uint8), WHITE)[0, 0])
    if color is not None:
        out = over_color(out, color)  # type: ignore[arg-type]
    if options.format == "jpg":
        out = np.ascontiguousarray(out[..., :3])
    return out, place


def encode(pixels: np.ndarray, fmt: str, png_compress_level: int) -> bytes:
    """Encode greyscale, RGB or RGBA pixels as ``png``, ``webp`` or ``jpg``."""
    if fmt == "png" and pixels.ndim == 3 and pixels.shape[2] == 4:
        return imageio.encode_png(pixels, png_compress_level)
    buffer = io.BytesIO()
    image = Image.fromarray(pixels)
    if fmt == "png":
        image.save(buffer, "PNG", compress_level=png_compress_level)
    elif fmt == "webp":
        # the mask alone is kept exact; colour is lossy at a high quality, its alpha lossless
        image.save(buffer, "WEBP", lossless=pixels.ndim == 2, quality=WEBP_QUALITY, method=4)
    else:
        image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def render(
    rgba: np.ndarray,
    options: OutputOptions,
    png_compress_level: int,
    box: tuple[int, int] = (0, 0),
    source: tuple[int, int] | None = None,
) -> Rendered:
    """The encoded output file for a tight cutout.

    Args:
        box: (left, top) of the cutout in the source (for ``frame``).
        source: (width, height) of the source (for ``frame``).

    Raises:
        CutoutError: 400 when the options ask for an output over :data:`MAX_OUTPUT_PIXELS`.
    """
    pixels, place = compose_output(rgba, options, box, source)
    return Rendered(encode(pixels, options.format, png_compress_level), options.format, place)
