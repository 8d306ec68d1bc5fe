"""From decoded image and model mask to the cropped RGBA cutout (the alpha table of docs/api.md).

| input    | force_rmbg | preserve_alpha | output alpha                                   |
|----------|------------|----------------|------------------------------------------------|
| no alpha | any        | any            | model mask                                     |
| alpha    | false      | true           | input alpha, exactly                           |
| alpha    | false      | false          | input alpha made binary (>= 128 opaque)        |
| alpha    | true       | true           | min(model mask, input alpha)                   |
| alpha    | true       | false          | model mask (on the image composited over white)|
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline import matting, refine
from pipeline.errors import no_product_found
from pipeline.imageio import DecodedImage, composite_over_white

BINARY_ALPHA_THRESHOLD = 128
AUTO_GUIDED_FACTOR = 3


def needs_model(image: DecodedImage, force_rmbg: bool) -> bool:
    """Whether the model's mask is part of the output alpha."""
    return not image.has_alpha or force_rmbg


def segmentation_source(image: DecodedImage) -> np.ndarray:
    """The RGB pixels the model should see: the image itself, or composited over white."""
    if image.alpha is None:
        return image.rgb
    return composite_over_white(image.rgb, image.alpha)


def normalize_probability(prob: np.ndarray, min_confidence: float) -> np.ndarray | None:
    """Stretch the model's probability map to [0, 1]; None when nothing is confidently foreground.

    Args:
        prob: (h, w) float probabilities from the model.
        min_confidence: If the highest probability is below this, there is no product.
    """
    hi = float(prob.max())
    lo = float(prob.min())
    if hi < min_confidence:
        return None
    if hi - lo < 1e-6:
        return np.ones_like(prob, dtype=np.float32)
    return ((prob - lo) / (hi - lo)).astype(np.float32)


def quantise(alpha: np.ndarray, cutoff: float) -> np.ndarray:
    """A [0, 1] float alpha as uint8, with faint values cut off.

    Values below ``cutoff`` become 0 and above ``1 - cutoff`` become 255, so that faint noise
    does not widen the crop and the inside of the product is solid. One saturating pass.
    """
    scale = 255.0 / (1.0 - 2.0 * cutoff)
    alpha = np.ascontiguousarray(alpha, dtype=np.float32)
    return cv2.addWeighted(alpha, scale, alpha, 0.0, -cutoff * scale, dtype=cv2.CV_8U)


def product_window(mask: np.ndarray, width: int, height: int, threshold: float, margin: int) -> tuple[slice, slice]:
    """The window of the full-resolution image outside which the alpha is certainly 0.

    A bilinearly enlarged pixel is a weighted mean of the 2x2 mask pixels around it, so it can
    exceed ``threshold`` only next to a mask pixel that does: the window is the bounding box
    of those, grown by ``margin`` mask pixels, in image pixels. The whole image when the mask
    is not enlarged.
    """
    h, w = mask.shape
    if width < w or height < h:
        return slice(0, height), slice(0, width)
    above = mask > threshold
    rows, cols = np.flatnonzero(above.any(axis=1)), np.flatnonzero(above.any(axis=0))
    if rows.size == 0:
        return slice(0, 0), slice(0, 0)
    sy, sx = height / h, width / w
    return (
        slice(max(0, math.floor((rows[0] - margin) * sy)), min(height, math.ceil((rows[-1] + 1 + margin) * sy))),
        slice(max(0, math.floor((cols[0] - margin) * sx)), min(width, math.ceil((cols[-1] + 1 + margin) * sx))),
    )


def _alpha_from_window(window: np.ndarray, rows: slice, cols: slice, width: int, height: int, cutoff: float) -> np.ndarray:
    alpha = np.zeros((height, width), np.uint8)
    if window.size:
        alpha[rows, cols] = quantise(window, cutoff)
    return alpha


def upsample_mask(mask: np.ndarray, width: int, height: int, cutoff: float) -> np.ndarray:
    """Resize a low-resolution [0, 1] mask bilinearly to the image and quantise it; only the
    window around the product is computed (outside it a full-frame pass gives 0)."""
    rows, cols = product_window(mask, width, height, cutoff, 2)
    return _alpha_from_window(refine.resize_mask_window(mask, width, height, rows, cols), rows, cols, width, height, cutoff)


def full_alpha(
    mask: np.ndarray, image: DecodedImage, mode: str, cutoff: float, model_size: int, matte: bool = False
) -> np.ndarray:
    """The model's [0, 1] mask as full-resolution uint8 alpha.

    Only the window around the product is computed (crop before full-resolution work); the
    alpha outside it is 0, exactly as a full-frame pass would give it.

    Args:
        mask: (h, w) normalised mask.
        image: The decoded input (its pixels guide the edges).
        mode: ``guided``, ``bilinear`` or ``auto`` (guided when the image's long side is at
            least three times ``model_size``: below that the guided filter measured no gain).
        cutoff: See :func:`quantise`.
        model_size: The model's input side.
        matte: Re-estimate the uncertain band by closed-form matting
            (:func:`pipeline.matting.matte_band`), the ``best`` quality.
    """
    if mode == "auto":
        mode = "guided" if max(image.width, image.height) >= AUTO_GUIDED_FACTOR * model_size else "bilinear"
    width, height = image.width, image.height
    scale = min(width / mask.shape[1], height / mask.shape[0])
    # band pixels (above the lowest band edge) may be raised by the filter or the matte
    low = min(refine.EDGE_BAND[0], cutoff) if mode == "guided" else cutoff
    grow = 0
    if mode == "guided":
        grow = refine.EDGE_GROW
    if matte:
        low = min(low, matting.MATTE_BAND[0])
        grow += matting.matte_grow(max(width / mask.shape[1], height / mask.shape[0]))
    if mode != "guided" and not matte:
        return upsample_mask(mask, width, height, cutoff)
    margin = 2 + math.ceil(grow / max(scale, 1e-6))
    rows, cols = product_window(mask, width, height, low, margin)
    source = segmentation_source(image)
    if mode == "guided":
        window = refine.refine_edges(mask, source, rows=rows, cols=cols)
    else:
        window = refine.resize_mask_window(mask, width, height, rows, cols)
    if matte and window.size:
        window = matting.matte_band(window, source[rows, cols], max(width / mask.shape[1], height / mask.shape[0]))
    return _alpha_from_window(window, rows, cols, width, height, cutoff)


def output_alpha(image: DecodedImage, model_alpha: np.ndarray | None, force_rmbg: bool, preserve_alpha: bool) -> np.ndarray:
    """The output alpha, by the table in this module's docstring.

    Args:
        image: The decoded input.
        model_alpha: Full-resolution uint8 model mask, or None when the model was not needed.
        force_rmbg: Run the model even if the input has alpha.
        preserve_alpha: Keep the input's alpha values.

    Raises:
        CutoutError: 422 no_product_found when the model was needed but found nothing.
    """
    if needs_model(image, force_rmbg):
        if model_alpha is None:
            raise no_product_found()
        if image.alpha is not None and preserve_alpha:
            return np.minimum(model_alpha, image.alpha)
        return model_alpha
    input_alpha = image.alpha if image.alpha is not None else np.full((image.height, image.width), 255, np.uint8)
    if preserve_alpha:
        return input_alpha
    return np.where(input_alpha >= BINARY_ALPHA_THRESHOLD, 255, 0).astype(np.uint8)


@dataclass(frozen=True)
class Crop:
    """The cut-out box in the input's pixel grid (after EXIF rotation)."""

    left: int
    top: int
    width: int
    height: int

    def as_dict(self) -> dict[str, int]:
        """JSON form of the response's ``crop`` (docs/api.md)."""
        return {"left": self.left, "top": self.top, "width": self.width, "height": self.height}


def bounding_box(alpha: np.ndarray) -> Crop:
    """The bounding box of the non-transparent pixels.

    Raises:
        CutoutError: 422 no_product_found when every pixel is transparent.
    """
    rows = np.flatnonzero(alpha.any(axis=1))
    if rows.size == 0:
        raise no_product_found()
    cols = np.flatnonzero(alpha[rows[0] : rows[-1] + 1].any(axis=0))
    return Crop(int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))


def cutout(
    image: DecodedImage,
    alpha: np.ndarray,
    foreground: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, Crop]:
    """Crop the image to the alpha's bounding box and attach the alpha.

    Fully transparent pixels get RGB 0 so that nothing hidden behind them leaks into the file.

    Args:
        image: The decoded input.
        alpha: Full-resolution output alpha.
        foreground: Optional ``(rgb_crop, alpha_crop) -> rgb_crop`` colour estimation for
            semi-transparent pixels, run on the crop only.

    Returns:
        The (h, w, 4) uint8 RGBA cutout and its crop box.
    """
    box = bounding_box(alpha)
    ys = slice(box.top, box.top + box.height)
    xs = slice(box.left, box.left + box.width)
    a = alpha[ys, xs]
    rgb = image.rgb[ys, xs] if foreground is None else foreground(image.rgb[ys, xs], a)
    rgb = cv2.bitwise_and(rgb, rgb, mask=a)  # RGB 0 where alpha is 0, in one pass
    return cv2.merge((rgb, a)), box
