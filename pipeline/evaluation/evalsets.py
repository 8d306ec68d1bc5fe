"""Evaluation samples with ground truth, read from ``../shared/eval`` (never copied into the repo).

Two sets:
- ``grabcut``: the 50 GrabCut photos; ground truth 0/255 with an unlabelled band of 128 that
  metrics ignore.
- ``composites``: the RGBA cutouts (real soft edges) composited over the background photos,
  so the true alpha *and* the true foreground colour of every edge pixel are known.

Only numpy and Pillow are imported, so a script in another virtualenv (rembg's) can build the
very same inputs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
COMPOSITE_BACKGROUND_SIDE = 1024


@dataclass
class Sample:
    """One evaluation input.

    Attributes:
        id: Stable name (``grabcut/llama``, ``composite/lemur_cutout+beach``).
        rgb: (H, W, 3) uint8 input.
        gt: (H, W) uint8 ground-truth alpha; 128 means "ignore" in the grabcut set.
        fg: (H, W, 3) uint8 true foreground colour, or None when unknown.
    """

    id: str
    rgb: np.ndarray
    gt: np.ndarray
    fg: np.ndarray | None = None

    @property
    def valid(self) -> np.ndarray:
        """Pixels the metrics count."""
        if self.id.startswith("grabcut/"):
            return self.gt != 128
        return np.ones(self.gt.shape, bool)


def default_eval_dir() -> Path:
    """``../shared/eval`` beside the checkout."""
    return Path(__file__).resolve().parents[3] / "shared" / "eval"


def grabcut(root: Path) -> Iterator[Sample]:
    """The GrabCut images with their ground truth."""
    for path in sorted((root / "grabcut" / "images").iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        gt_path = root / "grabcut" / "gt" / f"{path.stem}.png"
        if not gt_path.exists():
            continue
        rgb = np.asarray(Image.open(path).convert("RGB"))
        gt = np.asarray(Image.open(gt_path).convert("L"))
        if gt.shape != rgb.shape[:2]:
            continue
        yield Sample(f"grabcut/{path.stem}", rgb, gt)


def composites(root: Path) -> Iterator[Sample]:
    """Every cutout over every background, the cutout scaled to 60% of the background height."""
    backgrounds = sorted(p for p in (root / "backgrounds").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    cutouts = sorted(p for p in (root / "cutouts").iterdir() if p.suffix.lower() == ".png")
    for cpath in cutouts:
        cut = Image.open(cpath).convert("RGBA")
        for bpath in backgrounds:
            bg = Image.open(bpath).convert("RGB")
            scale = COMPOSITE_BACKGROUND_SIDE / max(bg.size)
            bg = bg.resize((round(bg.width * scale), round(bg.height * scale)), Image.LANCZOS)
            target_h = int(bg.height * 0.6)
            cscale = min(target_h / cut.height, 0.8 * bg.width / cut.width)
            c = cut.resize((max(1, round(cut.width * cscale)), max(1, round(cut.height * cscale))), Image.LANCZOS)
            x, y = (bg.width - c.width) // 2, (bg.height - c.height) // 2
            fg = np.zeros((bg.height, bg.width, 3), np.uint8)
            alpha = np.zeros((bg.height, bg.width), np.uint8)
            carr = np.asarray(c)
            fg[y : y + c.height, x : x + c.width] = carr[..., :3]
            alpha[y : y + c.height, x : x + c.width] = carr[..., 3]
            a = alpha.astype(np.float32)[..., None] / 255.0
            rgb = (fg.astype(np.float32) * a + np.asarray(bg, np.float32) * (1 - a) + 0.5).astype(np.uint8)
            yield Sample(f"composite/{cpath.stem}+{bpath.stem}", rgb, alpha, fg)


def samples(root: Path, which: str = "all") -> Iterator[Sample]:
    """The samples of ``which``: ``grabcut``, ``composites`` or ``all``."""
    if which in ("grabcut", "all"):
        yield from grabcut(root)
    if which in ("composites", "all"):
        yield from composites(root)
