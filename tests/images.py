"""Real image files made on the fly for tests (every awkward case a decoder meets)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT.parent / "shared" / "eval"


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def product_photo(width: int = 320, height: int = 240) -> Image.Image:
    """A dark product (a filled ellipse with a handle) on a light studio background."""
    yy, xx = np.mgrid[0:height, 0:width]
    cx, cy = width * 0.5, height * 0.55
    inside = ((xx - cx) / (width * 0.25)) ** 2 + ((yy - cy) / (height * 0.3)) ** 2 <= 1
    rgb = np.full((height, width, 3), 235, np.uint8)
    rgb[inside] = (180, 30, 40)
    return Image.fromarray(rgb, "RGB")


def rgba_with_alpha(width: int = 64, height: int = 48) -> tuple[Image.Image, np.ndarray]:
    """An RGBA image whose alpha has opaque, partial and transparent pixels."""
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[..., 0] = 200
    alpha = np.zeros((height, width), np.uint8)
    alpha[10:30, 20:40] = 255
    alpha[10:30, 40:44] = 100  # partial edge
    alpha[30:32, 20:40] = 20  # faint shadow
    return Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), alpha


def eval_image(name: str) -> Path:
    return EVAL / "grabcut" / "images" / name


def have_eval() -> bool:
    return (EVAL / "grabcut" / "images").is_dir()


def cmyk_jpeg_with_profile() -> bytes:
    """A CMYK JPEG carrying an ICC profile (Pillow can only embed profiles it has: we use LAB->... none)."""
    im = product_photo().convert("CMYK")
    return encode(im, "JPEG", quality=95)


def srgb_profile_bytes() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
