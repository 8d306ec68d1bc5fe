"""The ``best`` quality's edge work: closed-form alpha matting in the uncertain band, flip
test-time augmentation of the model's mask, and a second model pass on the product's crop.

- :func:`matte_band`: closed-form matting (Levin, Lischinski and Weiss, 2008) through
  ``pymatting``, solved only for the pixels of a trimap's unknown band around the mask's edge,
  in the band's bounding box, at a bounded working resolution.
- :func:`flip_batch` / :func:`merge_flips`: the model run on an image and on its mirror; the
  two probability maps (the mirror's mirrored back) averaged.
- :func:`crop_box` / :func:`crop_input` / :func:`merge_crop`: the product's box plus a margin
  cut from the full-resolution image and segmented again at the model's input size, so the
  model sees the product larger; its mask replaces the first pass's inside the box.

``pymatting`` compiles its numba kernels when it is imported (about a minute of CPU the first
time on a machine, cached on disk after): :func:`warm_up` imports it and solves a tiny matte,
for replicas to call at start-up, never on a request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from pipeline import imageio

MATTE_BAND = (0.05, 0.95)  # alpha values between these (and near them) are solved for
MATTE_WORK_SIDE = 160  # long side of the band's box the matte is solved at (pixels)
MATTE_GROW = 1.5  # the unknown band is grown by this many model-mask pixels (in image pixels)
MATTE_MIN_GROW = 2  # ... and at least this many image pixels
MATTE_EPSILON = 1e-5  # regularisation of the matting Laplacian (pymatting's default is 1e-7)
MATTE_MAX_ITERATIONS = 2000  # conjugate gradient iterations at most
MATTE_TOLERANCE = 1e-4  # conjugate gradient stops at this residual, relative to the right-hand side
MATTE_DISCARD = 1e-4  # the preconditioner's factor drops entries below this
MATTE_MIX = 0.3  # the band's alpha is this much the matte's, the rest the mask's
CROP_MARGIN = 0.25  # the crop pass's box is the product's grown by this fraction of its side
CROP_MIN_GAIN = 1.2  # the crop pass runs only when it shows the product at least this much larger


def warm_up() -> None:
    """Import ``pymatting`` (compiling or loading its numba kernels) and solve a tiny matte, so
    that the first request pays nothing of it."""
    rgb = np.zeros((24, 24, 3), np.uint8)
    rgb[:, 12:] = 255
    alpha = np.zeros((24, 24), np.float32)
    alpha[:, 12:] = 1.0
    alpha[:, 10:14] = 0.5
    matte_band(alpha, rgb, model_scale=1.0)


def _preconditioner(matrix: Any) -> Any:
    """pymatting's incomplete Cholesky preconditioner, with a small diagonal shift from the start
    (the matting Laplacian of a flat image region is barely positive definite: unshifted, the
    factorisation fails and pymatting prints a warning before retrying) and its scratch space
    bounded by the matrix's size instead of pymatting's fixed 250 million entries."""
    from pymatting import ichol

    return ichol(matrix, discard_threshold=MATTE_DISCARD, shifts=[1e-4, 1e-3, 1e-2, 0.1, 1.0], max_nnz=8 * matrix.nnz + 1024)


def matte_grow(model_scale: float) -> int:
    """Image pixels the unknown band is grown by, for ``model_scale`` image pixels per mask pixel."""
    return max(MATTE_MIN_GROW, round(MATTE_GROW * model_scale))


def _trimap(alpha: np.ndarray, grow: int, band: tuple[float, float]) -> np.ndarray:
    """0 background, 1 foreground, 0.5 unknown: the band between ``band`` grown by ``grow``."""
    unknown = ((alpha > band[0]) & (alpha < band[1])).astype(np.uint8)
    # a hard step between 0 and 1 (no soft pixel) is an edge too: its two sides are unknown
    hard_fg = (alpha >= band[1]).astype(np.uint8)
    edge = cv2.morphologyEx(hard_fg, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    unknown |= edge
    if grow > 0:
        unknown = cv2.dilate(unknown, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    trimap = (alpha >= 0.5).astype(np.float64)
    trimap[unknown.view(bool)] = 0.5
    return trimap


def matte_band(
    alpha: np.ndarray,
    rgb: np.ndarray,
    model_scale: float,
    work_side: int | None = None,
    band: tuple[float, float] | None = None,
    epsilon: float | None = None,
) -> np.ndarray:
    """Alpha re-estimated by closed-form matting in the uncertain band around the edge.

    The trimap's unknown region is every pixel whose alpha lies in ``band`` or that borders a
    hard 0/1 step, grown by about ``MATTE_GROW`` model pixels; the solid inside and outside
    keep their values. The matte is solved on the unknown region's bounding box, shrunk to
    ``work_side`` when larger, and only unknown pixels take its (enlarged) values.

    Args:
        alpha: (H, W) float alpha in [0, 1] (the model's mask at the image's resolution).
        rgb: (H, W, 3) uint8 image, the same window.
        model_scale: Image pixels per model-mask pixel (how blurry the mask's edge is).
        work_side: Longest side the band's box is solved at (default ``MATTE_WORK_SIDE``).
        band: Alpha values between these are unknown (default ``MATTE_BAND``).
        epsilon: Regularisation of the matting Laplacian (default ``MATTE_EPSILON``).

    Returns:
        (H, W) float32 alpha in [0, 1].
    """
    from pymatting import estimate_alpha_cf

    work_side = MATTE_WORK_SIDE if work_side is None else work_side
    band = MATTE_BAND if band is None else band
    epsilon = MATTE_EPSILON if epsilon is None else epsilon
    alpha = np.ascontiguousarray(alpha, dtype=np.float32)
    grow = matte_grow(model_scale)
    trimap = _trimap(alpha, grow, band)
    unknown = (trimap == 0.5).astype(np.uint8)
    x, y, w, h = cv2.boundingRect(unknown)
    if w == 0 or h == 0:
        return alpha
    pad = 2
    rows = slice(max(0, y - pad), min(alpha.shape[0], y + h + pad))
    cols = slice(max(0, x - pad), min(alpha.shape[1], x + w + pad))
    box_h, box_w = rows.stop - rows.start, cols.stop - cols.start
    scale = min(1.0, work_side / max(box_h, box_w))
    sw, sh = max(1, round(box_w * scale)), max(1, round(box_h * scale))
    image = rgb[rows, cols]
    tri = trimap[rows, cols]
    if scale < 1.0:
        image = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA)
        # nearest keeps the trimap's three values; the unknown band stays at least 1 px wide
        tri = cv2.resize(tri, (sw, sh), interpolation=cv2.INTER_NEAREST)
    if not (tri == 0.5).any() or not (tri == 1.0).any() or not (tri == 0.0).any():
        return alpha
    try:
        solved = estimate_alpha_cf(
            image.astype(np.float64) / 255.0,
            tri,
            preconditioner=_preconditioner,
            laplacian_kwargs={"epsilon": epsilon},
            cg_kwargs={"maxiter": MATTE_MAX_ITERATIONS, "rtol": MATTE_TOLERANCE},
        )
    except ValueError:  # the preconditioner found no factorisation: keep the mask's edge
        return alpha
    solved = np.clip(solved, 0.0, 1.0).astype(np.float32)
    if scale < 1.0:
        solved = cv2.resize(solved, (box_w, box_h), interpolation=cv2.INTER_LINEAR)
    if MATTE_MIX < 1.0:
        solved = MATTE_MIX * solved + (1.0 - MATTE_MIX) * alpha[rows, cols]
    out = alpha.copy()
    window = out[rows, cols]
    np.copyto(window, solved, where=unknown[rows, cols].view(bool))
    return out


def flip_batch(batch: np.ndarray, flip: np.ndarray) -> np.ndarray:
    """The batch followed by the mirror images of its rows where ``flip`` is true.

    Args:
        batch: (N, S, S, 3) model inputs.
        flip: (N,) bool, which rows also run mirrored.

    Returns:
        (N + flip.sum(), S, S, 3).
    """
    if not flip.any():
        return batch
    return np.concatenate([batch, batch[flip][:, :, ::-1]])


def merge_flips(probabilities: np.ndarray, flip: np.ndarray) -> np.ndarray:
    """Undo :func:`flip_batch` on the model's output: each flipped row's probability is the
    mean of the plain and the mirrored-back map.

    Args:
        probabilities: (N + flip.sum(), S, S) model outputs of :func:`flip_batch`'s batch.
        flip: (N,) bool, as given to :func:`flip_batch`.

    Returns:
        (N, S, S) float32.
    """
    n = len(flip)
    out = np.array(probabilities[:n], dtype=np.float32)
    mirrored = probabilities[n:, :, ::-1]
    out[flip] = 0.5 * (out[flip] + mirrored)
    return out


@dataclass(frozen=True)
class Box:
    """A box in the full-resolution image: ``left``, ``top``, ``width``, ``height`` pixels."""

    left: int
    top: int
    width: int
    height: int

    @property
    def rows(self) -> slice:
        """The box's rows."""
        return slice(self.top, self.top + self.height)

    @property
    def cols(self) -> slice:
        """The box's columns."""
        return slice(self.left, self.left + self.width)


def crop_box(mask: np.ndarray, width: int, height: int, model_size: int, threshold: float = 0.5) -> Box | None:
    """The box the second pass segments: the product (mask above ``threshold``) grown by
    ``CROP_MARGIN`` of its sides, in image pixels; None when it would not show the product at
    least ``CROP_MIN_GAIN`` times larger to the model than the first pass did, or when there
    is no product.

    Args:
        mask: (h, w) first-pass mask in [0, 1].
        width, height: The image's size.
        model_size: The model's input side.
        threshold: Mask values above this are the product.
    """
    above = mask > threshold
    rows, cols = np.flatnonzero(above.any(axis=1)), np.flatnonzero(above.any(axis=0))
    if rows.size == 0:
        return None
    sy, sx = height / mask.shape[0], width / mask.shape[1]
    top, bottom = rows[0] * sy, (rows[-1] + 1) * sy
    left, right = cols[0] * sx, (cols[-1] + 1) * sx
    my, mx = CROP_MARGIN * (bottom - top), CROP_MARGIN * (right - left)
    top, bottom = max(0, math.floor(top - my)), min(height, math.ceil(bottom + my))
    left, right = max(0, math.floor(left - mx)), min(width, math.ceil(right + mx))
    box = Box(left, top, right - left, bottom - top)
    # how much larger the model sees the product: first pass squeezes width, height into model_size
    gain = min(width / box.width, height / box.height)
    if gain < CROP_MIN_GAIN or min(box.width, box.height) < 8:
        return None
    del model_size  # the gain does not depend on it: both passes fill the model's input
    return box


def crop_input(rgb: np.ndarray, box: Box, model_size: int) -> np.ndarray:
    """The box cut from the image at the model's input size, as the first pass's input is made."""
    return imageio.model_input(np.ascontiguousarray(rgb[box.rows, box.cols]), model_size)


def merge_crop(mask: np.ndarray, crop_mask: np.ndarray, box: Box, width: int, height: int) -> np.ndarray:
    """One mask from both passes, on a grid fine enough for the crop's detail.

    The grid is the image shrunk so that the box spans about as many cells as the model's
    output has (never larger than the image); the first pass's mask fills it, and the crop
    pass's mask replaces it inside the box, blended over a few cells at the box's border
    so that no seam shows where the first pass still sees the product.

    Args:
        mask: (h, w) first-pass mask in [0, 1].
        crop_mask: (s, s) second-pass mask in [0, 1], of the box.
        box: The box of :func:`crop_box`.
        width, height: The image's size.

    Returns:
        (gh, gw) float32 mask covering the whole image.
    """
    f = min(1.0, max(crop_mask.shape[1] / box.width, crop_mask.shape[0] / box.height))
    gw, gh = max(1, round(width * f)), max(1, round(height * f))
    grid = cv2.resize(np.ascontiguousarray(mask, np.float32), (gw, gh), interpolation=cv2.INTER_LINEAR)
    top, left = round(box.top * f), round(box.left * f)
    bottom, right = min(gh, round((box.top + box.height) * f)), min(gw, round((box.left + box.width) * f))
    bh, bw = bottom - top, right - left
    if bh <= 0 or bw <= 0:
        return grid
    second = cv2.resize(np.ascontiguousarray(crop_mask, np.float32), (bw, bh), interpolation=cv2.INTER_AREA)
    # weight 1 inside, falling to 0 at the box's border where the box is cut from the image
    ramp = max(1, round(0.05 * min(bh, bw)))
    wy = np.minimum(1.0, (np.minimum(np.arange(bh), np.arange(bh)[::-1]) + 0.5) / ramp)
    wx = np.minimum(1.0, (np.minimum(np.arange(bw), np.arange(bw)[::-1]) + 0.5) / ramp)
    if top == 0:
        wy[: bh // 2] = 1.0
    if bottom == gh:
        wy[bh // 2 :] = 1.0
    if left == 0:
        wx[: bw // 2] = 1.0
    if right == gw:
        wx[bw // 2 :] = 1.0
    weight = np.outer(wy, wx).astype(np.float32)
    window = grid[top:bottom, left:right]
    window += weight * (second - window)
    return grid
