"""Content moderation with NudeNet's shipped detector behind a policy of blocking categories."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipeline.imageio import composite_over_white
from pipeline.settings import MODERATION_LABELS

# NudeNet letterboxes to a square and resizes to 320; a smaller copy first saves the work of
# padding a 50-megapixel image at full size, without changing what the detector sees.
_PRE_RESIZE_SIDE = 960


@dataclass(frozen=True)
class Detection:
    """One detected region."""

    category: str
    score: float
    box: tuple[int, int, int, int]


@dataclass(frozen=True)
class Policy:
    """Which categories block, from which score."""

    block: frozenset[str]
    threshold: float

    @classmethod
    def of(cls, block: Iterable[str], threshold: float) -> Policy:
        """Build a validated policy.

        Raises:
            ValueError: For an unknown category or a threshold outside (0, 1).
        """
        block = frozenset(c.strip().upper() for c in block if c.strip())
        unknown = sorted(block - set(MODERATION_LABELS))
        if unknown:
            raise ValueError(f"unknown moderation categories: {', '.join(unknown)}")
        if not 0 < threshold < 1:
            raise ValueError("moderation threshold must be between 0 and 1")
        return cls(block, float(threshold))

    def violations(self, detections: Iterable[Detection]) -> list[str]:
        """The blocking categories present in ``detections``."""
        return sorted({d.category for d in detections if d.category in self.block and d.score >= self.threshold})


class NudityDetector:
    """NudeNet's 320n detector (shipped in the ``nudenet`` package), limited to a thread budget.

    Args:
        threads: onnxruntime intra-op threads.
    """

    def __init__(self, threads: int = 1) -> None:
        import onnxruntime as ort
        from nudenet import NudeDetector
        from nudenet import nudenet as nudenet_module

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        self._detector = NudeDetector.__new__(NudeDetector)
        # NudeNet's own pre- and post-processing are reused; only the session is ours.
        path = nudenet_module.__file__.rsplit("/", 1)[0] + "/320n.onnx"
        self._detector.onnx_session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self._detector.input_width = self._detector.input_height = 320
        self._detector.input_name = self._detector.onnx_session.get_inputs()[0].name

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """Detect regions in an (H, W, 3) uint8 RGB image."""
        h, w = rgb.shape[:2]
        scale = min(1.0, _PRE_RESIZE_SIDE / max(h, w))
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR, reducing_gap=2.0))
        bgr = np.ascontiguousarray(rgb[..., ::-1])  # NudeNet takes OpenCV's BGR order
        found = self._detector.detect(bgr)
        return [
            Detection(d["class"], float(d["score"]), tuple(int(round(v / scale)) for v in d["box"]))  # type: ignore[arg-type]
            for d in found
        ]


def over_white(rgba: np.ndarray) -> np.ndarray:
    """An RGBA cutout as it is shown on a white page: what output moderation looks at."""
    return composite_over_white(rgba[..., :3], rgba[..., 3])
