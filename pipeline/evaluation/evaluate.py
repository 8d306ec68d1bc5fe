"""Cutout quality: run the real pipeline on images with ground truth and score it.

Metrics (over pixels whose ground truth is not 128):
- IoU of the alpha thresholded at 0.5;
- MAE of the soft alpha (0..1);
- boundary F-measure: boundaries of the thresholded masks matched within a tolerance of
  0.8% of the image diagonal (at least 2 px);
- edge colour error (composites only): mean absolute difference, in 0..255 units, between the
  output colour and the true foreground colour over the pixels where the true alpha is partial
  and the output is not transparent, weighted by the true alpha (what a viewer sees of each
  pixel; background bleeding shows up here);
- CPU-seconds per image (process time, every thread: not disturbed by other work on the machine
  the way wall time is).

``cutout eval`` prints one table row per configuration; ``--predictions NAME=DIR`` scores
another tool's RGBA outputs (``DIR/<sample id with / replaced by __>.png``) the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import Image

from pipeline import compose, imageio, matting, refine
from pipeline.evaluation.evalsets import Sample

if TYPE_CHECKING:
    from pipeline.segment import Segmenter
    from pipeline.settings import Settings


@dataclass(frozen=True)
class Config:
    """One pipeline configuration to evaluate (the segmenter aside)."""

    name: str
    refine_edges: str = "auto"
    refine_foreground: bool = False
    cutoff: float = 0.04
    min_confidence: float = 0.5
    flip: bool = False
    crop_pass: bool = False
    matte: bool = False

    @classmethod
    def from_settings(cls, name: str, settings: Settings) -> Config:
        """The configuration the service runs with ``settings``."""
        return cls(
            name,
            refine_edges=settings.refine_edges,
            refine_foreground=settings.refine_foreground,
            cutoff=settings.segmenter_alpha_cutoff,
            min_confidence=settings.segmenter_min_confidence,
        )


CONFIGS = (
    Config("bilinear", refine_edges="bilinear"),
    Config("guided", refine_edges="guided"),
    Config("guided+fg", refine_edges="guided", refine_foreground=True),
    Config("auto (default)"),  # quality=fast
    Config("auto, no cutoff", cutoff=0.0),
    Config("flip", flip=True),
    Config("crop pass", crop_pass=True),
    Config("matte", matte=True),
    Config("best (flip+matte)", flip=True, matte=True),  # quality=best
    Config("crop pass+matte", crop_pass=True, matte=True),
    Config("flip+crop pass", flip=True, crop_pass=True),
    Config("flip+crop pass+matte", flip=True, crop_pass=True, matte=True),
)


def _boundary(mask: np.ndarray) -> np.ndarray:
    m = mask.astype(np.uint8)
    return (m - cv2.erode(m, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)) > 0


def boundary_f(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> float:
    """Boundary F-measure of two binary masks within a tolerance of 0.8% of the diagonal."""
    tol = max(2, int(round(0.008 * np.hypot(*gt.shape))))
    pb, gb = _boundary(pred) & valid, _boundary(gt) & valid
    if not pb.any() and not gb.any():
        return 1.0
    if not pb.any() or not gb.any():
        return 0.0
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tol + 1, 2 * tol + 1))
    g_near = cv2.dilate(gb.astype(np.uint8), kernel) > 0
    p_near = cv2.dilate(pb.astype(np.uint8), kernel) > 0
    precision = (pb & g_near).sum() / pb.sum()
    recall = (gb & p_near).sum() / gb.sum()
    return float(0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))


@dataclass
class Scores:
    """Per-image metrics, averaged over a run."""

    iou: list[float] = field(default_factory=list)
    mae: list[float] = field(default_factory=list)
    bf: list[float] = field(default_factory=list)
    colour: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def add(self, sample: Sample, alpha: np.ndarray, rgb: np.ndarray, seconds: float) -> None:
        """Score one output: (H, W) uint8 alpha and (H, W, 3) uint8 colours in the input grid."""
        valid = sample.valid
        a = alpha.astype(np.float32) / 255.0
        g = sample.gt.astype(np.float32) / 255.0
        pred, truth = a >= 0.5, g >= 0.5
        inter = (pred & truth & valid).sum()
        union = ((pred | truth) & valid).sum()
        self.iou.append(float(inter / union) if union else 1.0)
        self.mae.append(float(np.abs(a - g)[valid].mean()))
        self.bf.append(boundary_f(pred, truth, valid))
        if sample.fg is not None:
            partial = (sample.gt > 0) & (sample.gt < 255) & (alpha > 0)
            if partial.any():
                # weighted by the true alpha: what a viewer sees of each edge pixel's colour
                weight = sample.gt[partial].astype(np.float32)
                diff = np.abs(rgb.astype(np.int16) - sample.fg.astype(np.int16)).mean(axis=2)[partial]
                self.colour.append(float((diff * weight).sum() / weight.sum()))
        self.seconds.append(seconds)

    def row(self, name: str) -> str:
        """A markdown table row."""
        colour = f"{np.mean(self.colour):.1f}" if self.colour else "-"
        return (
            f"| {name} | {len(self.iou)} | {np.mean(self.iou):.4f} | {np.mean(self.mae):.4f} | "
            f"{np.mean(self.bf):.4f} | {colour} | {np.mean(self.seconds):.3f} |"
        )


HEADER = "| configuration | images | IoU | MAE | boundary F | edge colour error | CPU-s/image |\n|---|---|---|---|---|---|---|"


def run_pipeline(segmenter: Segmenter, sample: Sample, config: Config) -> tuple[np.ndarray, np.ndarray]:
    """Our pipeline on one sample, the model fed at the segmenter's input size as the service
    feeds it: returns the uncropped output alpha and colours."""
    image = imageio.DecodedImage(sample.rgb, None, "png")
    size = segmenter.input_size
    batch = imageio.model_input(image.rgb, size)[None]
    flip = np.array([config.flip])
    prob = segmenter.predict(batch, flip)[0]
    mask = compose.normalize_probability(prob, config.min_confidence)
    if mask is None:
        return np.zeros(sample.gt.shape, np.uint8), sample.rgb
    if config.crop_pass and (box := matting.crop_box(mask, image.width, image.height, size)) is not None:
        second = segmenter.predict(matting.crop_input(image.rgb, box, size)[None], flip)[0]
        second_mask = compose.normalize_probability(second, config.min_confidence)
        if second_mask is not None:
            mask = matting.merge_crop(mask, second_mask, box, image.width, image.height)
    alpha = compose.full_alpha(mask, image, config.refine_edges, config.cutoff, size, matte=config.matte)
    rgb = refine.estimate_foreground(image.rgb, alpha) if config.refine_foreground else image.rgb
    return alpha, rgb


def evaluate(
    segmenter: Segmenter,
    samples: Iterable[Sample],
    configs: Iterable[Config] = CONFIGS,
    predictions: dict[str, Path] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Scores]]:
    """Scores per configuration (and per external prediction folder), split by set."""
    configs = list(configs)
    results: dict[str, dict[str, Scores]] = {}
    for sample in samples:
        subset = sample.id.split("/")[0]
        for config in configs:
            started = time.process_time()
            alpha, rgb = run_pipeline(segmenter, sample, config)
            results.setdefault(subset, {}).setdefault(config.name, Scores()).add(
                sample, alpha, rgb, time.process_time() - started
            )
        for name, folder in (predictions or {}).items():
            path = Path(folder) / (sample.id.replace("/", "__") + ".png")
            if not path.exists():
                continue
            out = np.asarray(Image.open(path).convert("RGBA"))
            if out.shape[:2] != sample.gt.shape:
                continue
            results.setdefault(subset, {}).setdefault(name, Scores()).add(sample, out[..., 3], out[..., :3], float("nan"))
        if progress:
            progress(sample.id)
    return results


def _checkerboard(height: int, width: int, cell: int = 12) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    board = np.where(((yy // cell) + (xx // cell)) % 2 == 0, 235, 200).astype(np.uint8)
    return np.repeat(board[..., None], 3, axis=2)


def on_checkerboard(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """An RGBA result shown over a checkerboard, as image editors show transparency."""
    a = alpha.astype(np.float32)[..., None] / 255.0
    board = _checkerboard(*alpha.shape)
    return (rgb.astype(np.float32) * a + board * (1 - a) + 0.5).astype(np.uint8)


def side_by_side(
    sample: Sample, panels: list[tuple[np.ndarray, np.ndarray]], height: int = 320, labels: list[str] | None = None
) -> Image.Image:
    """Input, then each (rgb, alpha) result on a checkerboard, scaled to one height; with
    ``labels`` (one per tile, the input's first) a caption strip above each tile."""
    from PIL import ImageDraw

    tiles = [sample.rgb] + [on_checkerboard(rgb, alpha) for rgb, alpha in panels]
    scaled = [Image.fromarray(t).resize((max(1, round(t.shape[1] * height / t.shape[0])), height), Image.LANCZOS) for t in tiles]
    top = 22 if labels else 0
    canvas = Image.new("RGB", (sum(t.width for t in scaled) + 8 * (len(scaled) - 1), height + top), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for k, tile in enumerate(scaled):
        canvas.paste(tile, (x, top))
        if labels and k < len(labels):
            draw.text((x + 4, 4), labels[k], fill=(0, 0, 0))
        x += tile.width + 8
    return canvas


def report(results: dict[str, dict[str, Scores]]) -> str:
    """Markdown tables, one per set."""
    parts = []
    for subset, by_name in results.items():
        parts.append(f"### {subset}\n\n{HEADER}")
        parts.extend(scores.row(name) for name, scores in by_name.items())
        parts.append("")
    return "\n".join(parts)
