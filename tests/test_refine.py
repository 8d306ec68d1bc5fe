"""Guided edge refinement: edges follow the photo, and only the uncertain band changes."""

from __future__ import annotations

import cv2
import numpy as np

from pipeline import refine


def step_image(width: int = 960, height: int = 640, edge: int = 517) -> np.ndarray:
    """A dark product left of column ``edge`` on a light background, with some texture."""
    rng = np.random.default_rng(0)
    rgb = np.full((height, width, 3), 230, np.int16)
    rgb[:, :edge] = 40
    return np.clip(rgb + rng.normal(0, 4, rgb.shape), 0, 255).astype(np.uint8)


def blurry_mask(width: int, height: int, edge: int, side: int = 320) -> np.ndarray:
    """What a low-resolution model gives: the right answer, blurred and at ``side`` pixels."""
    full = np.zeros((height, width), np.float32)
    full[:, :edge] = 1.0
    small = cv2.resize(full, (side, side), interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(small, (0, 0), 1.5)


def test_refined_edge_follows_the_photo():
    rgb = step_image()
    mask = blurry_mask(960, 640, 517)
    bilinear = refine.resize_mask(mask, 960, 640)
    refined = refine.refine_edges(mask, rgb)
    for row in (100, 320, 600):
        steps = -np.diff(refined[row])
        assert int(np.argmax(steps)) == 516  # the alpha drops hardest exactly where the photo's edge is
        assert steps.max() > 2.5 * (-np.diff(bilinear[row])).max()  # far more than a bilinear mask does


def test_only_the_uncertain_band_changes():
    rgb = step_image()
    mask = blurry_mask(960, 640, 517)
    bilinear = refine.resize_mask(mask, 960, 640)
    refined = refine.refine_edges(mask, rgb)
    certain = (bilinear <= 0.02) | (bilinear >= 0.98)
    far = cv2.erode(certain.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0  # beyond the grown band
    assert np.array_equal(refined[far], bilinear[far])
    assert not np.array_equal(refined, bilinear)


def test_band_sampling_equals_filtering_the_whole_image():
    # evaluating the guided filter in the band's bounding box only gives what a full-size pass gives
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (700, 1100, 3), dtype=np.uint8)
    mask = cv2.GaussianBlur(rng.random((320, 320)).astype(np.float32), (0, 0), 8)
    mask = (mask - mask.min()) / (mask.max() - mask.min())
    refined = refine.refine_edges(mask, rgb)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    mean_a, mean_b = refine._guided_coefficients(mask, gray, 1024, 3, 1e-3)
    whole = cv2.resize(mean_a, (1100, 700)) * (gray / 255.0) + cv2.resize(mean_b, (1100, 700))
    bilinear = refine.resize_mask(mask, 1100, 700)
    changed = np.abs(refined - bilinear) > 1e-5  # the window's own resize agrees with a full one to float rounding
    assert changed.sum() > 1000
    assert np.abs(refined[~changed] - bilinear[~changed]).max() <= 1e-5
    assert np.abs(refined[changed] - np.clip(whole, 0, 1)[changed]).max() < 1e-4
