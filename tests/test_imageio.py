"""Decoding untrusted bytes: formats by magic, limits from the header, awkward real files."""

from __future__ import annotations

import base64
import io
import itertools

import numpy as np
import pytest
from PIL import Image, ImageCms

from pipeline.errors import CutoutError
from pipeline.imageio import composite_over_white, decode_base64, decode_image, encode_png, jpeg_preview, sniff
from tests.images import cmyk_print_profile, encode, product_photo, rgba_with_alpha

MP = 1_000_000


def decode(data: bytes, max_pixels: int = 50 * MP):
    return decode_image(data, "file", max_pixels)


def status_of(fn, *args) -> tuple[int, str, str | None]:
    with pytest.raises(CutoutError) as info:
        fn(*args)
    return info.value.status, info.value.reason, info.value.parameter


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_supported_formats_decode_to_rgb(fmt):
    im = product_photo(80, 60)
    out = decode(encode(im, fmt, **({"quality": 95} if fmt != "PNG" else {})))
    assert out.rgb.shape == (60, 80, 3) and out.rgb.dtype == np.uint8
    assert out.alpha is None
    assert out.format == fmt.lower()
    # the red product is still red in the middle
    r, g, b = out.rgb[33, 40].astype(int)
    assert r > 150 and g < 80 and b < 80


@pytest.mark.parametrize("fmt,expected", [("GIF", "gif"), ("BMP", "bmp"), ("TIFF", "tiff")])
def test_other_formats_are_415_even_with_an_image_name(fmt, expected):
    data = encode(product_photo(40, 30), fmt)
    assert sniff(data) == expected
    assert status_of(decode, data)[:2] == (415, "unsupported_format")


def test_random_bytes_are_415_and_truncated_jpeg_is_400():
    assert status_of(decode, b"hello world, not an image")[0] == 415
    jpeg = encode(product_photo(200, 150), "JPEG")
    status, reason, parameter = status_of(decode, jpeg[: len(jpeg) // 2])
    assert (status, reason, parameter) == (400, "corrupt_image", "file")


def test_corrupt_png_is_400():
    png = bytearray(encode(product_photo(50, 40), "PNG"))
    png[60:80] = b"\x00" * 20  # garbage in the IDAT stream / CRC
    assert status_of(decode, bytes(png))[0] == 400


def test_pixel_limit_is_checked_from_the_header_before_decoding():
    # A 1-bit PNG of 10000 x 6000 (60 MP) is a few kB: a classic decompression bomb.
    bomb = encode(Image.new("1", (10000, 6000)), "PNG")
    assert len(bomb) < 200_000
    status, reason, _ = status_of(decode, bomb)
    assert (status, reason) == (413, "resolution_too_large")
    # the boundary: exactly at the limit passes, one pixel more fails
    im = encode(Image.new("RGB", (100, 50)), "PNG")
    assert decode(im, max_pixels=5000).width == 100
    assert status_of(decode_image, im, "file", 4999)[0] == 413


def test_exif_orientation_is_applied():
    im = product_photo(80, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    out = decode(encode(im, "JPEG", exif=exif.tobytes(), quality=95))
    assert (out.width, out.height) == (40, 80)


def test_cmyk_jpeg_becomes_rgb():
    out = decode(encode(product_photo(80, 60).convert("CMYK"), "JPEG", quality=95))
    assert out.rgb.shape == (60, 80, 3)
    r, g, b = out.rgb[33, 40].astype(int)
    assert r > 150 and g < 90 and b < 90


def test_cmyk_jpeg_is_converted_through_its_embedded_icc_profile():
    # 8x8 patches of every mix of 0, 50 and 100% of each ink (flat patches survive JPEG well)
    mixes = np.array(list(itertools.product((0, 128, 255), repeat=4)), np.uint8).reshape(9, 9, 4)
    cmyk = Image.fromarray(np.kron(mixes, np.ones((8, 8, 1), np.uint8)), "CMYK")
    profile = cmyk_print_profile()
    data = encode(cmyk, "JPEG", quality=95, icc_profile=profile)
    as_stored = Image.open(io.BytesIO(data))
    assert as_stored.mode == "CMYK" and as_stored.info["icc_profile"] == profile
    through_profile = np.asarray(
        ImageCms.profileToProfile(
            as_stored, ImageCms.ImageCmsProfile(io.BytesIO(profile)), ImageCms.createProfile("sRGB"), outputMode="RGB"
        )
    )
    naive = np.asarray(as_stored.convert("RGB"))
    out = decode(data).rgb
    assert np.array_equal(out, through_profile)
    assert np.abs(through_profile.astype(int) - naive).mean() > 20  # the profile changes the colours...
    black, cyan = (4, 2 * 8 + 4), (6 * 8 + 4, 4)  # mixes 2 (100% K alone) and 54 (100% C alone)
    assert tuple(naive[black]) == (0, 0, 0) and min(out[black]) > 30  # ...the ink's black is not pure black
    assert tuple(naive[cyan]) == (0, 255, 255) and out[cyan][0] > 60 and out[cyan][1] < 230  # cyan ink is no pure cyan
    # the model's reduced decode converts through the same profile
    preview = jpeg_preview(data, 32)
    assert preview is not None and np.abs(preview.astype(int) - np.asarray(Image.fromarray(out).reduce(2))).mean() < 3


def test_16_bit_greyscale_png_is_scaled_not_clipped():
    arr = np.full((20, 30), 32768, np.uint16)  # mid-grey in 16 bits
    im = Image.fromarray(arr, "I;16")
    out = decode(encode(im, "PNG"))
    assert abs(int(out.rgb[5, 5, 0]) - 128) <= 1


def test_greyscale_alpha_and_palette_transparency_give_alpha():
    la = Image.fromarray(np.dstack([np.full((10, 10), 90, np.uint8), np.tile(np.arange(10, dtype=np.uint8) * 20, (10, 1))]), "LA")
    out = decode(encode(la, "PNG"))
    assert out.alpha is not None and out.alpha[0, 3] == 60 and tuple(out.rgb[0, 0]) == (90, 90, 90)

    p = Image.new("P", (10, 10), 0)
    p.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    p.paste(1, (0, 0, 5, 10))
    out = decode(encode(p, "PNG", transparency=0))
    assert out.alpha is not None
    assert out.alpha[:, :5].min() == 255 and out.alpha[:, 5:].max() == 0


def test_fully_opaque_alpha_counts_as_no_alpha():
    rgba = Image.new("RGBA", (10, 10), (10, 20, 30, 255))
    assert decode(encode(rgba, "PNG")).alpha is None


def test_rgba_keeps_partial_alpha_exactly():
    im, alpha = rgba_with_alpha()
    out = decode(encode(im, "PNG"))
    assert np.array_equal(out.alpha, alpha)


def test_animated_webp_uses_first_frame():
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    out = decode(data)
    assert tuple(out.rgb[10, 10]) == (255, 0, 0)


def test_base64_accepts_data_url_and_line_breaks_and_refuses_junk():
    raw = encode(product_photo(20, 10), "PNG")
    text = base64.b64encode(raw).decode()
    assert decode_base64(text, 10**6) == raw
    assert decode_base64("data:image/png;base64," + text, 10**6) == raw
    assert decode_base64("\n".join(text[i : i + 76] for i in range(0, len(text), 76)), 10**6) == raw
    assert status_of(decode_base64, text[:-3] + "*==", 10**6)[:2] == (400, "invalid_base64")
    assert status_of(decode_base64, "abc", 10**6)[0] == 400


def test_base64_byte_limit_boundary():
    raw = b"\xff\xd8\xff" + b"x" * 997  # 1000 bytes
    text = base64.b64encode(raw).decode()
    assert len(decode_base64(text, 1000)) == 1000
    status, reason, parameter = status_of(decode_base64, text, 999)
    assert (status, reason, parameter) == (413, "file_too_large", "file")


def test_composite_over_white():
    rgb = np.zeros((1, 3, 3), np.uint8)
    alpha = np.array([[0, 128, 255]], np.uint8)
    out = composite_over_white(rgb, alpha)
    assert out[0, 0, 0] == 255 and out[0, 2, 0] == 0 and 126 <= out[0, 1, 0] <= 128


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_embedded_icc_profile_is_converted_to_srgb(fmt):
    from tests.images import rgb_matrix_profile

    # A profile whose "red" primary is sRGB's green: pure red pixels in it are green in sRGB.
    srgb_red, srgb_green, srgb_blue = (0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141)
    profile = rgb_matrix_profile(srgb_green, srgb_red, srgb_blue)
    data = encode(Image.new("RGB", (16, 16), (255, 0, 0)), fmt, icc_profile=profile, **({"quality": 95} if fmt != "PNG" else {}))
    r, g, b = decode(data).rgb[8, 8].astype(int)
    assert g > 230 and r < 25 and b < 25
    # an sRGB-tagged image is left as it is
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    same = decode(encode(Image.new("RGB", (16, 16), (200, 40, 10)), "PNG", icc_profile=srgb)).rgb[8, 8]
    assert tuple(same) == (200, 40, 10)


def test_rgba_with_icc_profile_keeps_alpha():
    from tests.images import rgb_matrix_profile

    profile = rgb_matrix_profile((0.3851, 0.7169, 0.0971), (0.4361, 0.2225, 0.0139), (0.1431, 0.0606, 0.7141))
    im, alpha = rgba_with_alpha()
    out = decode(encode(im, "PNG", icc_profile=profile))
    assert np.array_equal(out.alpha, alpha)


def test_result_png_round_trips_exactly_through_other_decoders():
    import io

    import cv2

    rng = np.random.default_rng(0)
    for shape in [(1, 1, 4), (3, 5, 4), (97, 131, 4)]:
        rgba = rng.integers(0, 256, shape, dtype=np.uint8)
        for level in (0, 2, 9):
            png = encode_png(rgba, level)
            im = Image.open(io.BytesIO(png))
            im.load()  # Pillow checks every chunk's CRC
            assert im.mode == "RGBA" and np.array_equal(np.asarray(im), rgba)
            bgra = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)  # libpng
            assert np.array_equal(bgra[..., [2, 1, 0, 3]], rgba)
    smooth = np.dstack([np.tile(np.arange(256, dtype=np.uint8), (64, 1))] * 4)
    assert len(encode_png(smooth, 2)) < smooth.nbytes / 20  # the filter makes gradients compress


def test_jpeg_preview_is_a_reduced_decode_in_the_same_orientation_and_colours():
    im = product_photo(1280, 640)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    data = encode(im, "JPEG", exif=exif.tobytes(), quality=95)
    full = decode(data)
    preview = jpeg_preview(data, 320)
    assert preview is not None and preview.shape == (640, 320, 3)  # 1/2 scale, rotated like the full decode
    halved = np.asarray(Image.fromarray(full.rgb).reduce(2)).astype(int)
    assert np.abs(preview.astype(int) - halved).mean() < 3
    assert jpeg_preview(encode(product_photo(400, 300), "JPEG"), 320) is None  # no 1/2 step keeps 320
    assert jpeg_preview(encode(im, "PNG"), 32) is None
    cmyk = jpeg_preview(encode(product_photo(1280, 640).convert("CMYK"), "JPEG", quality=95), 320)
    assert cmyk is not None and cmyk.shape == (320, 640, 3)
    r, g, b = cmyk[176, 320].astype(int)  # the red product, converted from CMYK like the full decode
    assert r > 150 and g < 90 and b < 90
