"""The segmentation model behind one small interface: model-sized uint8 in, probabilities out."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class Segmenter:
    """Runs a salient-object model on batches of model-sized images.

    Args:
        model: Registered model name (``u2netp``).
        device: ``cpu`` or ``cuda``.
        cache_dir: Where converted weights are cached.
        threads: Torch intra-op threads on the CPU (0 leaves torch's default).

    Raises:
        ValueError: For an unknown model, or ``cuda`` without a GPU.
    """

    def __init__(self, model: str, device: str, cache_dir: Path, threads: int = 0) -> None:
        import torch

        if model != "u2netp":
            raise ValueError(f"CUTOUT_SEGMENTER_MODEL: unknown model {model!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("CUTOUT_SEGMENTER_DEVICE is 'cuda' but no CUDA device is visible to this replica")
        if threads > 0:
            torch.set_num_threads(threads)
        from pipeline.models import u2netp
        from pipeline.models.u2netp_weights import load_u2netp

        self._torch = torch
        self._preprocess = u2netp.preprocess
        self.name = model
        self.input_size = u2netp.INPUT_SIZE
        self.device = torch.device(device)
        self.model = load_u2netp(Path(cache_dir)).to(self.device).eval()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Foreground probabilities for a batch.

        Args:
            batch: (N, S, S, 3) uint8 RGB at the model's input size.

        Returns:
            (N, S, S) float32 probabilities in [0, 1].
        """
        torch = self._torch
        with torch.inference_mode():
            x = self._preprocess(batch).to(self.device)
            y = self.model(x)[:, 0]
            return y.float().cpu().numpy()
