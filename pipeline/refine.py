"""From the model's low-resolution mask to full-resolution alpha and clean edge colours.

- :func:`refine_edges`: a fast guided filter (He et al., 2010/2015) in the uncertain band
  around the mask's edge. The filter's linear coefficients are fitted at a working resolution
  between the mask and the image, with the image as guide, then sampled at the band's
  full-resolution pixels, so edges follow the photo's own edges instead of a blurry bilinear
  mask.
- :func:`estimate_foreground`: blur-fusion foreground estimation (Forte and Pitié, 2021): the
  colour of semi-transparent pixels is re-estimated so that the old background does not bleed
  into the cutout's edges.
"""

from __future__ import annotations

import cv2
import numpy as np

cv2.setNumThreads(1)  # replicas get their CPUs from Ray; do not oversubscribe


def _box(x: np.ndarray, r: int) -> np.ndarray:
    return cv2.boxFilter(x, -1, (2 * r + 1, 2 * r + 1), borderType=cv2.BORDER_REFLECT)


def _resize(x: np.ndarray, width: int, height: int) -> np.ndarray:
    return cv2.resize(x, (width, height), interpolation=cv2.INTER_LINEAR)


def resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """A float mask resized to ``width`` x ``height``: bilinear up, area-averaged down."""
    mask = np.ascontiguousarray(mask, dtype=np.float32)
    shrink = width < mask.shape[1] or height < mask.shape[0]
    return cv2.resize(mask, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resize_mask_window(mask: np.ndarray, width: int, height: int, rows: slice, cols: slice) -> np.ndarray:
    """``resize_mask(mask, width, height)[rows, cols]``, computed for the window only when the
    mask is enlarged (the usual case); contiguous float32."""
    mask = np.ascontiguousarray(mask, dtype=np.float32)
    if width < mask.shape[1] or height < mask.shape[0]:
        return np.ascontiguousarray(resize_mask(mask, width, height)[rows, cols])
    return np.ascontiguousarray(_resized_window(mask, width, height, rows, cols))


def _gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def _guided_coefficients(
    mask: np.ndarray, guide_full: np.ndarray, work_side: int, radius: int, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """The guided filter's smoothed linear coefficients (a, b), fitted at the working resolution."""
    height, width = guide_full.shape[:2]
    scale = min(1.0, work_side / max(height, width))
    ww, wh = max(1, round(width * scale)), max(1, round(height * scale))
    guide = _resize(guide_full, ww, wh).astype(np.float32) / 255.0
    p = _resize(mask.astype(np.float32), ww, wh)
    mean_i = _box(guide, radius)
    mean_p = _box(p, radius)
    cov_ip = _box(guide * p, radius) - mean_i * mean_p
    var_i = _box(guide * guide, radius) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return _box(a, radius), _box(b, radius)


def _resized_window(coefficients: np.ndarray, width: int, height: int, rows: slice, cols: slice) -> np.ndarray:
    """The window ``rows`` x ``cols`` of ``coefficients`` resized to ``width`` x ``height``
    (bilinear, as ``cv2.resize`` gives it), computed for the window's rows only: bilinear
    resizing is separable, so the columns are resized to the full height (a narrow map, cheap),
    then only the window's rows are resized across."""
    tall = cv2.resize(coefficients, (coefficients.shape[1], height), interpolation=cv2.INTER_LINEAR)[rows]
    return cv2.resize(tall, (width, tall.shape[0]), interpolation=cv2.INTER_LINEAR)[:, cols]


EDGE_BAND = (0.02, 0.98)  # mask values between these are "uncertain"
EDGE_GROW = 3  # pixels the uncertain band is grown by


def refine_edges(
    mask: np.ndarray,
    rgb: np.ndarray,
    radius: int = 3,
    eps: float = 1e-3,
    band: tuple[float, float] = EDGE_BAND,
    grow: int = EDGE_GROW,
    work_side: int = 1024,
    rows: slice = slice(None),
    cols: slice = slice(None),
) -> np.ndarray:
    """Full-resolution alpha: bilinear everywhere, guided-filtered in the uncertain edge band.

    The solid inside and outside of the mask are kept as they are; only pixels near the edge
    (mask between ``band`` values, grown by ``grow`` pixels) take the guided filter's value.
    The filter is fitted at ``work_side`` on the whole image and evaluated only in the band's
    bounding box, so the full-resolution cost is a few vector passes over that box.

    Args:
        mask: (h, w) float mask from the model.
        rgb: (H, W, 3) uint8 full-resolution image (the guide).
        radius: Guided filter radius at the working resolution.
        eps: Guided filter regularisation.
        band: Mask values between these are "uncertain".
        grow: Pixels the uncertain band is grown by.
        work_side: Long side of the resolution the filter is fitted at.
        rows, cols: The window of the full-resolution alpha wanted (default: all of it); it
            must hold every band pixel grown by ``grow`` (compose.product_window ensures it).

    Returns:
        (window height, window width) float32 alpha in [0, 1].
    """
    height, width = rgb.shape[:2]
    rows, cols = slice(*rows.indices(height)), slice(*cols.indices(width))
    full = resize_mask_window(mask, width, height, rows, cols)
    uncertain = ((full > band[0]) & (full < band[1])).view(np.uint8)
    x, y, w, h = cv2.boundingRect(uncertain)
    if w == 0 or h == 0:
        return full
    # the band's bounding box, grown by the dilation: all later work is on this box only
    r = slice(max(0, y - grow), min(full.shape[0], y + h + grow))
    c = slice(max(0, x - grow), min(full.shape[1], x + w + grow))
    box = cv2.dilate(uncertain[r, c], np.ones((2 * grow + 1, 2 * grow + 1), np.uint8)).view(bool)
    guide_full = _gray(rgb)
    mean_a, mean_b = _guided_coefficients(mask, guide_full, work_side, radius, eps)
    r_abs = slice(rows.start + r.start, rows.start + r.stop)
    c_abs = slice(cols.start + c.start, cols.start + c.stop)
    guide = guide_full[r_abs, c_abs].astype(np.float32) * np.float32(1.0 / 255.0)
    values = _resized_window(mean_a, width, height, r_abs, c_abs)
    values *= guide
    values += _resized_window(mean_b, width, height, r_abs, c_abs)
    np.clip(values, 0.0, 1.0, out=values)
    np.copyto(full[r, c], values, where=box)
    return full


def _blur_fusion(image: np.ndarray, fg: np.ndarray, bg: np.ndarray, alpha: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    a = alpha[..., None]
    blurred_a = cv2.blur(alpha, (r, r))[..., None]
    blurred_fa = cv2.blur(fg * a, (r, r))
    blurred_f = blurred_fa / (blurred_a + 1e-5)
    blurred_b1a = cv2.blur(bg * (1 - a), (r, r))
    blurred_b = blurred_b1a / ((1 - blurred_a) + 1e-5)
    fg = blurred_f + a * (image - a * blurred_f - (1 - a) * blurred_b)
    return np.clip(fg, 0, 1), blurred_b


def estimate_foreground(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Foreground colours for an image and its alpha (blur fusion, two passes).

    Args:
        rgb: (H, W, 3) uint8 image (usually already cropped to the product).
        alpha: (H, W) uint8 alpha.

    Returns:
        (H, W, 3) uint8 foreground; pixels with alpha 0 or 255 keep the image's colour.
    """
    partial = (alpha > 0) & (alpha < 255)
    if not partial.any():
        return rgb
    image = rgb.astype(np.float32) * (1.0 / 255.0)
    a = alpha.astype(np.float32) * (1.0 / 255.0)
    side = max(rgb.shape[:2])
    large = max(3, int(round(90 * side / 1024)))
    fg, bg = _blur_fusion(image, image, image, a, large)
    fg, _ = _blur_fusion(image, fg, bg, a, 6)
    out = rgb.copy()
    out[partial] = (fg[partial] * 255.0 + 0.5).astype(np.uint8)
    return out
