"""Moderation: NudeNet's real shipped detector on real photos, behind the blocking policy."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import CutoutError
from pipeline.imageio import DecodedImage
from pipeline.moderation import Detection, Policy
from pipeline.service import ContentModerator, LoadedImage
from pipeline.settings import DEFAULT_MODERATION_BLOCK
from tests.images import eval_image

needs_eval = pytest.mark.usefixtures("eval_dir")


def test_policy_blocks_only_listed_categories_at_threshold():
    policy = Policy.of(["face_female", "FEET_EXPOSED"], 0.5)
    found = [
        Detection("FACE_FEMALE", 0.8, (0, 0, 1, 1)),
        Detection("FEET_EXPOSED", 0.49, (0, 0, 1, 1)),
        Detection("FACE_MALE", 0.9, (0, 0, 1, 1)),
    ]
    assert policy.violations(found) == ["FACE_FEMALE"]
    with pytest.raises(ValueError, match="NOT_A_LABEL"):
        Policy.of(["NOT_A_LABEL"], 0.5)


@pytest.fixture(scope="module")
def photo() -> LoadedImage:
    rgb = np.asarray(Image.open(eval_image("person1.jpg")).convert("RGB"))
    return LoadedImage(DecodedImage(rgb, None, "jpeg"), None)


@needs_eval
def test_default_policy_lets_an_ordinary_portrait_through(photo):
    ContentModerator(Policy.of(DEFAULT_MODERATION_BLOCK, 0.5)).check_input(photo)


@needs_eval
def test_face_policy_blocks_input_and_output(photo):
    moderator = ContentModerator(Policy.of(["FACE_FEMALE", "FACE_MALE"], 0.5))
    with pytest.raises(CutoutError) as info:
        moderator.check_input(photo)
    err = info.value
    assert (err.status, err.reason, err.details["stage"]) == (422, "content_moderation_failed", "input")
    assert err.details["categories"] == ["FACE_FEMALE"]
    rgba = np.dstack([photo.image.rgb, np.full(photo.image.rgb.shape[:2], 255, np.uint8)])
    with pytest.raises(CutoutError) as info:
        moderator.check_output(rgba)
    assert info.value.details["stage"] == "output"


@needs_eval
def test_fully_transparent_output_shows_nothing(photo):
    moderator = ContentModerator(Policy.of(["FACE_FEMALE", "FACE_MALE"], 0.5))
    rgba = np.dstack([photo.image.rgb, np.zeros(photo.image.rgb.shape[:2], np.uint8)])
    moderator.check_output(rgba)  # what is invisible on the page is not judged
