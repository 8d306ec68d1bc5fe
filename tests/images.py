"""Real image files made on the fly for tests (every awkward case a decoder meets)."""

from __future__ import annotations

import base64
import io
import itertools
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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


def _s15(v: float) -> bytes:
    return struct.pack(">i", int(round(v * 65536)))


def _xyz(v) -> bytes:
    return b"XYZ " + b"\0" * 4 + b"".join(_s15(c) for c in v)


def _desc(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return b"desc" + b"\0" * 4 + struct.pack(">I", len(raw)) + raw + b"\0" * 4 + b"\0" * 4 + b"\0" * 2 + b"\0" + b"\0" * 67


def _icc_v2(device_class: bytes, colour_space: bytes, pcs: bytes, tags: list[tuple[bytes, bytes]]) -> bytes:
    """An ICC v2 profile: the 128-byte header, the tag table and the tags, 4-byte aligned."""
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for sig, body in tags:
        while (offset + len(data)) % 4:
            data += b"\0"
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = struct.pack(">I", size) + b"lcms" + bytes([2, 0x10, 0, 0]) + device_class + colour_space + pcs
    header += b"\0" * 12 + b"acsp" + b"APPL" + b"\0" * 4 + b"\0" * 4 + b"\0" * 4 + b"\0" * 8 + b"\0" * 4
    header += _s15(D50[0]) + _s15(D50[1]) + _s15(D50[2]) + b"\0" * 4
    header = header.ljust(128, b"\0")
    return header + struct.pack(">I", len(tags)) + table + data


D50 = (0.9642, 1.0, 0.8249)
# sRGB's primaries adapted to D50, as the sRGB ICC profile states them (columns: red, green, blue).
SRGB_PRIMARIES_D50 = np.array([(0.4361, 0.3851, 0.1431), (0.2225, 0.7169, 0.0606), (0.0139, 0.0971, 0.7141)])


def rgb_matrix_profile(red_xyz, green_xyz, blue_xyz, gamma: float = 2.2) -> bytes:
    """A minimal ICC v2 RGB matrix/TRC display profile with the given primaries (D50 XYZ).

    Pillow can only create sRGB, LAB and XYZ profiles; tests need a real non-sRGB RGB profile
    to see that embedded profiles are applied, so this builds one byte by byte.
    """
    curve = b"curv" + b"\0" * 4 + struct.pack(">I", 1) + struct.pack(">H", int(round(gamma * 256))) + b"\0\0"
    return _icc_v2(
        b"mntr",
        b"RGB ",
        b"XYZ ",
        [
            (b"desc", _desc("test wide primaries")),
            (b"wtpt", _xyz(D50)),
            (b"rXYZ", _xyz(red_xyz)),
            (b"gXYZ", _xyz(green_xyz)),
            (b"bXYZ", _xyz(blue_xyz)),
            (b"rTRC", curve),
            (b"gTRC", curve),
            (b"bTRC", curve),
        ],
    )


# The print that cmyk_print_profile describes: paper and inks as linear-light RGB transmittances.
PAPER = np.array([0.88, 0.89, 0.91])
INKS = np.array([(0.15, 0.55, 0.90), (0.85, 0.20, 0.55), (0.95, 0.90, 0.10), (0.04, 0.04, 0.045)])  # C, M, Y, K
DOT_GAIN = 0.8  # printed coverage = nominal ** DOT_GAIN


def cmyk_print_profile(grid: int = 5) -> bytes:
    """A CMYK printer profile as a press's profile is made: ICC v2, Lab PCS, an A2B0 lookup table.

    Pillow cannot create CMYK profiles, and none ships with the test machine, so this builds
    one byte by byte (4 kB). The table samples a simple model of a print at ``grid`` steps per
    ink: inks that absorb a little of the wrong colours (cyan also absorbs some green, magenta
    some blue and red), a black that is not quite black, off-white paper, and dot gain. Little
    CMS interpolates between the samples, as it does in any press profile.
    """

    def lab(xyz: np.ndarray) -> tuple[float, float, float]:
        t = xyz / np.array(D50)
        f = np.where(t > (6 / 29) ** 3, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)
        return 116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])

    clut = b""
    for cmyk in itertools.product(np.linspace(0, 1, grid), repeat=4):  # the first ink varies slowest
        coverage = np.array(cmyk)[:, None] ** DOT_GAIN
        reflected = PAPER * np.prod(1 - coverage * (1 - INKS), axis=0)
        lightness, a, b = lab(SRGB_PRIMARIES_D50 @ reflected)
        # ICC v2 16-bit Lab: L* 0..100 -> 0..0xFF00, a* and b* -128..127.99 -> 0..0xFFFF
        clut += struct.pack(">HHH", round(lightness * 652.8), round((a + 128) * 256), round((b + 128) * 256))
    identity_curve = struct.pack(">HH", 0, 0xFFFF)
    lut16 = (
        b"mft2"
        + b"\0" * 4
        + bytes([4, 3, grid, 0])
        + b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))  # matrix: used only for XYZ input
        + struct.pack(">HH", 2, 2)
        + identity_curve * 4
        + clut
        + identity_curve * 3
    )
    return _icc_v2(
        b"prtr",
        b"CMYK",
        b"Lab ",
        [
            (b"desc", _desc("test CMYK print")),
            (b"wtpt", _xyz(D50)),
            (b"A2B0", lut16),
        ],
    )
