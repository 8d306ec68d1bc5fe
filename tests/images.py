"""Real image files made on the fly for tests (every awkward case a decoder meets)."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import numpy as np
import pytest
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


def require_eval_data(folder: Path = EVAL) -> Path:
    """The evaluation photos (``../shared/eval``) for a test that needs them.

    When they are absent the test is skipped locally, saying why; under CI (``CI=true``) it
    fails instead, so that a green CI run cannot hide that the real-photo tests never ran.
    """
    if not (folder / "grabcut" / "images").is_dir():
        reason = f"the evaluation photos are absent: no folder {folder / 'grabcut' / 'images'}"
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"{reason}; under CI=true the tests that need them must run", pytrace=False)
        pytest.skip(reason)
    return folder


def cmyk_jpeg_with_profile() -> bytes:
    """A CMYK JPEG carrying an ICC profile (Pillow can only embed profiles it has: we use LAB->... none)."""
    im = product_photo().convert("CMYK")
    return encode(im, "JPEG", quality=95)


def srgb_profile_bytes() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def rgb_matrix_profile(red_xyz, green_xyz, blue_xyz, gamma: float = 2.2) -> bytes:
    """A minimal ICC v2 RGB matrix/TRC display profile with the given primaries (D50 XYZ).

    Pillow can only create sRGB, LAB and XYZ profiles; tests need a real non-sRGB RGB profile
    to see that embedded profiles are applied, so this builds one byte by byte.
    """
    import struct

    def s15(v: float) -> bytes:
        return struct.pack(">i", int(round(v * 65536)))

    def xyz(v) -> bytes:
        return b"XYZ " + b"\0" * 4 + b"".join(s15(c) for c in v)

    def desc(text: str) -> bytes:
        raw = text.encode() + b"\0"
        body = b"desc" + b"\0" * 4 + struct.pack(">I", len(raw)) + raw + b"\0" * 4 + b"\0" * 4 + b"\0" * 2 + b"\0" + b"\0" * 67
        return body

    curve = b"curv" + b"\0" * 4 + struct.pack(">I", 1) + struct.pack(">H", int(round(gamma * 256))) + b"\0\0"
    tags = [
        (b"desc", desc("test wide primaries")),
        (b"wtpt", xyz((0.9642, 1.0, 0.8249))),
        (b"rXYZ", xyz(red_xyz)),
        (b"gXYZ", xyz(green_xyz)),
        (b"bXYZ", xyz(blue_xyz)),
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for sig, body in tags:
        while (offset + len(data)) % 4:
            data += b"\0"
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = struct.pack(">I", size) + b"lcms" + bytes([2, 0x10, 0, 0]) + b"mntr" + b"RGB " + b"XYZ "
    header += b"\0" * 12 + b"acsp" + b"APPL" + b"\0" * 4 + b"\0" * 4 + b"\0" * 4 + b"\0" * 8 + b"\0" * 4
    header += s15(0.9642) + s15(1.0) + s15(0.8249) + b"\0" * 4
    header = header.ljust(128, b"\0")
    return header + struct.pack(">I", len(tags)) + table + data
