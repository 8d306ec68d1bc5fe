"""Decoding untrusted image bytes into sRGB pixels and an optional alpha channel.

Decisions (also in docs/api.md):
- The format is decided by the bytes (magic numbers), never by a name or Content-Type.
- Dimensions are read from the header and checked before any pixel is decoded.
- EXIF orientation is applied; the crop in the response is in that rotated grid.
- Colour is converted to sRGB using the embedded ICC profile (CMYK included); the output PNG
  carries no profile, so every viewer shows it as sRGB.
- 16-bit samples are scaled to 8 bits (not clipped); greyscale becomes RGB; a palette or an
  RGB/greyscale image with a transparency entry yields an alpha channel.
- Animated images: the first frame.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms, ImageOps
from zlib_ng import zlib_ng

from pipeline.errors import CutoutError, bad_request, too_large, unsupported_format

# The pixel limit is ours (checked from the header); Pillow's own bomb guard stays as a backstop.
Image.MAX_IMAGE_PIXELS = 600_000_000

_DATA_URL = re.compile(r"^data:image/[a-zA-Z0-9.+-]+;base64,", re.ASCII)
_WHITESPACE = re.compile(r"[\r\n\t ]+")
_SRGB = ImageCms.createProfile("sRGB")

SUPPORTED = ("jpeg", "png", "webp")
_PIL_FORMAT = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}


@dataclass
class DecodedImage:
    """Decoded pixels in the input's grid after EXIF rotation.

    Attributes:
        rgb: (H, W, 3) uint8, sRGB.
        alpha: (H, W) uint8, or None when the input has no alpha or a fully opaque one.
        format: ``jpeg``, ``png`` or ``webp``.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    format: str

    @property
    def width(self) -> int:
        """Width in pixels."""
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        """Height in pixels."""
        return int(self.rgb.shape[0])

    @property
    def has_alpha(self) -> bool:
        """True when the input carries an alpha channel that is not fully opaque."""
        return self.alpha is not None


def decode_base64(text: str, max_bytes: int) -> bytes:
    """Decode the ``file`` field (strict base64, optional data-URL prefix, line breaks allowed).

    Raises:
        CutoutError: 413 over ``max_bytes`` (checked before decoding), 400 for bad base64.
    """
    text = _DATA_URL.sub("", text, count=1)
    text = _WHITESPACE.sub("", text)
    if (len(text) // 4) * 3 - 2 > max_bytes:
        raise too_large("file_too_large", f"The image is larger than {max_bytes} bytes.", "file")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("invalid_base64", "'file' is not valid base64.", "file") from None
    if len(data) > max_bytes:
        raise too_large("file_too_large", f"The image is larger than {max_bytes} bytes.", "file")
    if not data:
        raise bad_request("invalid_base64", "'file' is empty.", "file")
    return data


def sniff(data: bytes) -> str | None:
    """The format of ``data`` from its first bytes: ``jpeg``, ``png``, ``webp``, another name, or None."""
    head = data[:16]
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    for magic, name in (
        (b"GIF8", "gif"),
        (b"BM", "bmp"),
        (b"II*\x00", "tiff"),
        (b"MM\x00*", "tiff"),
        (b"%PDF", "pdf"),
        (b"<svg", "svg"),
        (b"<?xml", "svg"),
    ):
        if head.startswith(magic):
            return name
    if head[4:8] == b"ftyp":
        return "heif/avif"
    return None


def _corrupt(parameter: str, internal: str) -> CutoutError:
    return bad_request("corrupt_image", f"The image in '{parameter}' is corrupt or truncated.", parameter, internal=internal)


def decode_image(data: bytes, parameter: str, max_pixels: int) -> DecodedImage:
    """Decode image bytes under the pixel limit.

    Args:
        data: The raw file.
        parameter: ``file`` or ``image_url``, named in errors.
        max_pixels: Largest accepted width times height.

    Raises:
        CutoutError: 415 unsupported format, 413 too many pixels, 400 corrupt or truncated.
    """
    fmt = sniff(data)
    if fmt not in SUPPORTED:
        raise unsupported_format(parameter, fmt)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=[_PIL_FORMAT[fmt]])
    except Image.DecompressionBombError:
        raise too_large("resolution_too_large", "The image has too many pixels.", parameter) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _corrupt(parameter, repr(exc)) from None
    width, height = im.size
    if width < 1 or height < 1:
        raise _corrupt(parameter, "zero-sized image")
    if width * height > max_pixels:
        raise too_large(
            "resolution_too_large",
            f"The image has {width * height / 1e6:.1f} megapixels; the limit is {max_pixels / 1e6:g}.",
            parameter,
            details={"width": width, "height": height},
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im.seek(0)
            im.load()
            im = ImageOps.exif_transpose(im)
            rgb, alpha = _to_srgb(im)
    except CutoutError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, struct.error) as exc:
        raise _corrupt(parameter, repr(exc)) from None
    except MemoryError:
        raise too_large("resolution_too_large", "The image is too large to decode.", parameter) from None
    if alpha is not None and int(alpha.min()) == 255:
        alpha = None  # a fully opaque alpha channel counts as no alpha
    return DecodedImage(rgb=rgb, alpha=alpha, format=fmt)


def _scale16(im: Image.Image) -> Image.Image:
    arr = np.asarray(im).astype(np.int64)
    return Image.fromarray((arr.clip(0, 65535) >> 8).astype(np.uint8), "L")


def _to_srgb(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    icc = im.info.get("icc_profile")
    has_key = "transparency" in im.info
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        im = _scale16(im)
        mode = "L"
        has_key = False  # a 16-bit transparency key does not survive the scaling exactly
    if mode == "1":
        im, mode = im.convert("L"), "L"
    if mode == "P":
        im = im.convert("RGBA" if has_key or im.palette.mode == "RGBA" else "RGB")
    elif mode in ("RGB", "L") and has_key:
        im = im.convert("RGBA" if mode == "RGB" else "LA")
    elif mode == "RGBa":
        im = im.convert("RGBA")
    elif mode == "La":
        im = im.convert("LA")
    elif mode == "PA":
        im = im.convert("RGBA")
    alpha = None
    if im.mode in ("RGBA", "LA"):
        alpha = np.asarray(im.getchannel("A"))
        im = im.convert("RGB" if im.mode == "RGBA" else "L")
    if icc and im.mode in ("RGB", "L", "CMYK"):
        im = _apply_icc(im, icc)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im), alpha


def _apply_icc(im: Image.Image, icc: bytes) -> Image.Image:
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if im.mode == "RGB" and "srgb" in ImageCms.getProfileDescription(src).lower():
            return im
        return ImageCms.profileToProfile(im, src, _SRGB, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return im  # an unusable profile is ignored: the pixels are taken as sRGB


def jpeg_preview(data: bytes, side: int) -> np.ndarray | None:
    """A JPEG decoded at reduced scale for the model: both sides still at least ``side``.

    libjpeg scales by 1/2, 1/4 or 1/8 while decoding (Pillow's draft mode), which costs a
    fraction of a full decode and replaces most of the downscaling work. EXIF rotation and
    colour conversion are the same as :func:`decode_image`'s. Call it only on bytes that
    :func:`decode_image` has accepted.

    Returns:
        (h, w, 3) uint8 sRGB, or None when no reduction applies (small images, not JPEG).
    """
    if sniff(data) != "jpeg":
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data), formats=["JPEG"])
            full = im.size
            im.draft("RGB" if im.mode in ("RGB", "YCbCr") else im.mode, (side, side))
            if im.size == full:
                return None
            im.load()
            rgb, _ = _to_srgb(ImageOps.exif_transpose(im))
            return rgb
    except Exception:  # the full decode already succeeded: fall back to it
        return None


def model_input(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize to the model's square input (uint8, size x size x 3), as rembg does (Lanczos)."""
    return np.asarray(Image.fromarray(rgb, "RGB").resize((size, size), Image.LANCZOS, reducing_gap=3.0))


def composite_over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The image as a viewer sees it on white: what the model segments for alpha inputs."""
    a = alpha.astype(np.uint16)[..., None]
    return ((rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def encode_png(rgba: np.ndarray, compress_level: int) -> bytes:
    """Encode an (H, W, 4) uint8 array as an 8-bit RGBA PNG.

    Every row uses PNG's "Up" filter (each byte minus the byte above it), computed in one numpy
    pass, and the rows are deflated by zlib-ng. Pillow and libpng try all five filters on every
    row; on cutouts this one filter with zlib-ng level 2 measured about 3x faster than
    Pillow's level 1 for files no larger (docs/benchmarks.md).

    Args:
        rgba: (H, W, 4) uint8.
        compress_level: zlib level 0..9.
    """
    height, width = rgba.shape[:2]
    rows = np.ascontiguousarray(rgba).reshape(height, width * 4)
    filtered = np.empty((height, width * 4 + 1), dtype=np.uint8)
    filtered[:, 0] = _PNG_FILTER_UP
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # uint8 arithmetic wraps, as PNG wants
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8-bit RGBA, no interlace
    return b"".join(
        (
            _PNG_SIGNATURE,
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib_ng.compress(filtered, compress_level)),
            _png_chunk(b"IEND", b""),
        )
    )


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_FILTER_UP = 2


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib_ng.crc32(data, zlib_ng.crc32(kind)))
