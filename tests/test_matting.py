"""The `best` quality: matting along the edge, flip test-time augmentation, the crop pass, and
the `quality` field and setting."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from pipeline import compose, matting
from pipeline.errors import CutoutError
from pipeline.imageio import DecodedImage
from pipeline.request import parse_body
from pipeline.segment import Segmenter
from pipeline.settings import SettingsError, load_settings
from tests.images import eval_image


def soft_disc(side: int = 400, radius: float = 120.0, softness: float = 10.0) -> np.ndarray:
    """A disc whose edge fades from 1 to 0 over ``softness`` pixels: the true alpha."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    distance = np.hypot(yy - side / 2, xx - side / 2)
    return np.clip((radius + softness / 2 - distance) / softness, 0.0, 1.0)


def composite(alpha: np.ndarray) -> np.ndarray:
    """A reddish product over a textured bluish background through ``alpha``."""
    rng = np.random.default_rng(1)
    h, w = alpha.shape
    fg = np.empty((h, w, 3), np.float32)
    fg[:] = (200, 60, 40)
    bg = np.empty((h, w, 3), np.float32)
    bg[:] = (40, 90, 190)
    bg += cv2.GaussianBlur(rng.normal(0, 12, (h, w, 3)).astype(np.float32), (0, 0), 3)
    a = alpha[..., None]
    return np.clip(fg * a + bg * (1 - a) + 0.5, 0, 255).astype(np.uint8)


def model_mask(alpha: np.ndarray, side: int = 40) -> np.ndarray:
    """What a low-resolution model gives for ``alpha``: the answer at ``side`` pixels, a little
    too wide and blurred."""
    grown = cv2.dilate(alpha, np.ones((9, 9), np.uint8))
    small = cv2.resize(grown, (side, side), interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(small, (0, 0), 1.0)


def test_matting_brings_a_blurry_mask_closer_to_a_known_soft_edge():
    truth = soft_disc()
    rgb = composite(truth)
    mask = model_mask(truth)
    upsampled = cv2.resize(mask, truth.shape[::-1], interpolation=cv2.INTER_LINEAR)
    matted = matting.matte_band(upsampled, rgb, model_scale=truth.shape[0] / mask.shape[0])
    before = float(np.abs(upsampled - truth).mean())
    after = float(np.abs(matted - truth).mean())
    assert after < 0.8 * before  # at least 20% lower mean absolute error
    # the solid inside and the far outside are left as they were
    assert matted[200, 200] == upsampled[200, 200] == pytest.approx(1.0)
    assert matted[5, 5] == upsampled[5, 5] == 0.0


def test_best_alpha_through_compose_is_closer_to_the_truth_than_fast():
    truth = soft_disc()
    image = DecodedImage(composite(truth), None, "png")
    mask = model_mask(truth)
    fast = compose.full_alpha(mask, image, "auto", 0.04, 40)
    best = compose.full_alpha(mask, image, "auto", 0.04, 40, matte=True)
    truth8 = truth * 255
    assert np.abs(best - truth8).mean() < 0.85 * np.abs(fast.astype(np.float32) - truth8).mean()


def test_matting_leaves_a_mask_without_an_edge_alone():
    rgb = np.full((64, 64, 3), 128, np.uint8)
    for alpha in (np.zeros((64, 64), np.float32), np.ones((64, 64), np.float32)):
        assert np.array_equal(matting.matte_band(alpha, rgb, model_scale=2.0), alpha)


def test_merge_flips_averages_each_flipped_row_with_its_mirror_mirrored_back():
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 255, (3, 8, 8, 3), dtype=np.uint8)
    flip = np.array([True, False, True])
    extended = matting.flip_batch(batch, flip)
    assert extended.shape[0] == 5
    assert np.array_equal(extended[3], batch[0][:, ::-1]) and np.array_equal(extended[4], batch[2][:, ::-1])
    outputs = rng.random((5, 8, 8)).astype(np.float32)
    merged = matting.merge_flips(outputs, flip)
    assert np.allclose(merged[0], (outputs[0] + outputs[3][:, ::-1]) / 2)
    assert np.array_equal(merged[1], outputs[1])
    assert np.allclose(merged[2], (outputs[2] + outputs[4][:, ::-1]) / 2)


@pytest.fixture(scope="module")
def u2netp(tmp_path_factory):
    return Segmenter("u2netp", "cpu", tmp_path_factory.mktemp("weights"), threads=2)


@pytest.mark.usefixtures("eval_dir")
def test_flip_tta_output_is_the_average_of_the_image_and_its_mirror_in_a_mixed_batch(u2netp):
    from PIL import Image

    photos = [Image.open(eval_image(name)).convert("RGB").resize((320, 320)) for name in ("106024.jpg", "124080.jpg")]
    batch = np.stack([np.asarray(p) for p in photos])
    plain = u2netp.predict(batch)
    mirrored = u2netp.predict(np.ascontiguousarray(batch[:, :, ::-1]))[:, :, ::-1]
    mixed = u2netp.predict(batch, np.array([True, False]))
    assert np.abs(mixed[0] - (plain[0] + mirrored[0]) / 2).max() < 1e-4  # `best`: the average
    assert np.abs(mixed[1] - plain[1]).max() < 1e-4  # `fast` in the same batch: unchanged
    assert np.abs(mixed[0] - plain[0]).max() > 1e-3  # and the mirror did change something


def test_crop_pass_box_and_merge():
    mask = np.zeros((40, 40), np.float32)
    mask[10:20, 12:22] = 1.0  # a product a quarter of the image's side
    box = matting.crop_box(mask, 400, 400, 40)
    assert box is not None and box.left < 120 and box.left + box.width > 220
    second = np.zeros((40, 40), np.float32)
    second[5:35, 5:35] = 1.0
    merged = matting.merge_crop(mask, second, box, 400, 400)
    assert merged.shape[0] > 40  # a finer grid than the first pass's
    assert merged[0, 0] == 0.0
    assert matting.crop_box(np.ones((40, 40), np.float32), 400, 400, 40) is None  # no gain: no second pass


@pytest.mark.parametrize("value", ["ultra", 3, True, ["best"]])
def test_an_invalid_quality_is_a_400_naming_the_field_in_the_documented_shape(value):
    with pytest.raises(CutoutError) as info:
        parse_body(json.dumps({"image_url": "https://example.com/a.jpg", "quality": value}).encode())
    error = info.value
    assert error.status == 400
    body = json.loads(json.dumps(error.to_body()))
    assert set(body["error"]) == {"code", "reason", "message", "parameter", "details"} and body["error"]["code"] == 400
    assert body["error"]["reason"] == "invalid_parameter" and body["error"]["parameter"] == "quality"
    assert "fast, best" in body["error"]["message"]


@pytest.mark.parametrize(("value", "expected"), [("best", "best"), ("FAST", "fast"), (None, None), ("", None)])
def test_quality_values(value, expected):
    req = parse_body(json.dumps({"image_url": "https://example.com/a.jpg", "quality": value}).encode())
    assert req.quality == expected


def test_default_quality_setting_is_validated():
    assert load_settings(environ={}).default_quality == "fast"
    assert load_settings(environ={"CUTOUT_DEFAULT_QUALITY": "best"}).default_quality == "best"
    with pytest.raises(SettingsError, match="CUTOUT_DEFAULT_QUALITY"):
        load_settings(environ={"CUTOUT_DEFAULT_QUALITY": "ultra"})
