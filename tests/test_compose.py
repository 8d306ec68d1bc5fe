"""The alpha table of docs/api.md, row by row, and the crop."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.compose import bounding_box, cutout, normalize_probability, output_alpha, upsample_mask
from pipeline.errors import CutoutError
from pipeline.imageio import DecodedImage

H, W = 6, 8
MODEL = np.zeros((H, W), np.uint8)
MODEL[1:5, 2:7] = 200
INPUT_ALPHA = np.zeros((H, W), np.uint8)
INPUT_ALPHA[0:4, 0:5] = 255
INPUT_ALPHA[4, 0:5] = 90  # partial


def image(alpha):
    rgb = np.full((H, W, 3), 50, np.uint8)
    return DecodedImage(rgb=rgb, alpha=alpha, format="png")


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("preserve", [False, True])
def test_row_no_alpha_uses_model_mask(force, preserve):
    assert np.array_equal(output_alpha(image(None), MODEL, force, preserve), MODEL)


def test_row_alpha_keep_exactly():
    assert np.array_equal(output_alpha(image(INPUT_ALPHA), None, False, True), INPUT_ALPHA)


def test_row_alpha_made_binary():
    out = output_alpha(image(INPUT_ALPHA), None, False, False)
    assert set(np.unique(out)) == {0, 255}
    assert out[4, 0] == 0  # 90 < 128 becomes transparent
    assert out[0, 0] == 255


def test_row_force_and_preserve_is_minimum():
    out = output_alpha(image(INPUT_ALPHA), MODEL, True, True)
    assert np.array_equal(out, np.minimum(MODEL, INPUT_ALPHA))
    assert out[4, 3] == 90 and out[2, 2] == 200 and out[2, 6] == 0


def test_row_force_without_preserve_is_model():
    assert np.array_equal(output_alpha(image(INPUT_ALPHA), MODEL, True, False), MODEL)


def test_model_needed_but_found_nothing_is_no_product():
    with pytest.raises(CutoutError) as info:
        output_alpha(image(None), None, False, False)
    assert (info.value.status, info.value.reason) == (422, "no_product_found")


def test_crop_is_bounding_box_of_alpha_and_hides_transparent_rgb():
    rgba, crop = cutout(image(None), MODEL)
    assert crop.as_dict() == {"left": 2, "top": 1, "width": 5, "height": 4}
    assert rgba.shape == (4, 5, 4)
    alpha = MODEL.copy()
    alpha[1, 2] = 0
    rgba, _ = cutout(image(None), alpha)
    assert tuple(rgba[0, 0]) == (0, 0, 0, 0)


def test_empty_alpha_is_no_product():
    with pytest.raises(CutoutError) as info:
        bounding_box(np.zeros((3, 3), np.uint8))
    assert info.value.reason == "no_product_found"


def test_low_confidence_probability_means_no_product():
    assert normalize_probability(np.full((4, 4), 0.2, np.float32), 0.5) is None
    prob = np.array([[0.1, 0.9]], np.float32)
    assert np.allclose(normalize_probability(prob, 0.5), [[0, 1]])


def test_upsample_cutoff_makes_background_transparent_and_inside_solid():
    mask = np.zeros((4, 4), np.float32)
    mask[1:3, 1:3] = 1.0
    mask[0, 0] = 0.02  # faint noise
    full = upsample_mask(mask, 40, 40, cutoff=0.04)
    assert full.shape == (40, 40) and full.dtype == np.uint8
    assert full[0, 0] == 0 and full[20, 20] == 255


@pytest.mark.parametrize("mode", ["guided", "bilinear"])
@pytest.mark.parametrize("cutoff", [0.04, 0.0])
def test_alpha_computed_around_the_product_only_equals_a_full_frame_pass(mode, cutoff):
    # crop before full-resolution work: the window around the product must lose nothing
    import cv2

    from pipeline import compose, refine

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:320, 0:320]
    mask = ((((yy - 150) / 70.0) ** 2 + ((xx - 190) / 50.0) ** 2) <= 1).astype(np.float32)
    mask = np.clip(cv2.GaussianBlur(mask, (0, 0), 3) + rng.normal(0, 0.004, mask.shape).astype(np.float32), 0, 1)
    rgb = rng.integers(0, 256, (1500, 2100, 3), dtype=np.uint8)
    image = DecodedImage(rgb=rgb, alpha=None, format="jpeg")
    windowed = compose.full_alpha(mask, image, mode, cutoff, 320)
    full = refine.refine_edges(mask, rgb) if mode == "guided" else refine.resize_mask(mask, 2100, 1500)
    reference = compose.quantise(full, cutoff)
    assert windowed.shape == reference.shape
    assert reference.any() and (reference == 0).any()
    # equal but for float rounding of the window's own resize: one level, at a few pixels
    assert int(np.abs(windowed.astype(int) - reference).max()) <= 1
    assert (windowed != reference).mean() < 1e-3
    if cutoff > 0:
        rows, cols = compose.product_window(mask, 2100, 1500, min(refine.EDGE_BAND[0], cutoff), 2)
        assert (rows.stop - rows.start) * (
            cols.stop - cols.start
        ) < 0.5 * 1500 * 2100  # the window is the product's, not the frame
