"""The segmentation model behind one small interface: model-sized uint8 in, probabilities out."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.models.registry import ModelSpec, get_spec

_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


def preprocess(batch: np.ndarray, spec: ModelSpec):
    """Normalise (N, H, W, 3) uint8 RGB as the model was trained; returns (N, 3, H, W) float32."""
    import torch

    x = torch.from_numpy(np.array(batch, dtype=np.uint8, copy=True)).float()
    if spec.normalisation == "image_max":
        x = x / x.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1.0)
    else:
        x = x / 255.0
    mean = torch.tensor(spec.mean).view(1, 1, 1, 3)
    std = torch.tensor(spec.std).view(1, 1, 1, 3)
    return ((x - mean) / std).permute(0, 3, 1, 2).contiguous()


def fuse_conv_bn(model):
    """Fold each ``conv_s1`` + ``bn_s1`` pair (U²-Net, IS-Net blocks) into one convolution.

    Inference only (eval mode); the outputs are unchanged (measured max difference 0.0), and a
    BatchNorm pass per block is saved.
    """
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()
    for module in model.modules():
        conv, bn = getattr(module, "conv_s1", None), getattr(module, "bn_s1", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            module.conv_s1 = fuse_conv_bn_eval(conv, bn)
            module.bn_s1 = nn.Identity()
    return model


class Segmenter:
    """Runs a registered salient-object model on batches of model-sized images.

    Args:
        model: Registry name.
        device: ``cpu`` or ``cuda``.
        cache_dir: Where weights are downloaded and converted.
        threads: Torch intra-op threads on the CPU (0 leaves torch's default).
        weights_uri: Weights overriding the model's default (path, gs:// or https://).
        weights_sha256: Their SHA-256.
        dtype: ``float32``, ``float16`` (CUDA) or ``bfloat16``.

    Raises:
        ValueError: For an unknown model, unusable weights, or ``cuda`` without a GPU; the
            message names the setting.
    """

    def __init__(
        self,
        model: str,
        device: str,
        cache_dir: Path,
        threads: int = 0,
        weights_uri: str | None = None,
        weights_sha256: str | None = None,
        dtype: str = "float32",
    ) -> None:
        import torch

        from pipeline.models.weights import load_model

        self.spec = get_spec(model)
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("CUTOUT_SEGMENTER_DEVICE is 'cuda' but no CUDA device is visible to this replica")
        if threads > 0:
            torch.set_num_threads(threads)
        self._torch = torch
        self.name = model
        self.device = torch.device(device)
        self.dtype = getattr(torch, _DTYPES[dtype])
        net = fuse_conv_bn(load_model(self.spec, weights_uri, weights_sha256, Path(cache_dir)))
        net = net.to(self.device, dtype=self.dtype if self.device.type == "cuda" else torch.float32)
        self.model = net.to(memory_format=torch.channels_last).eval()
        self._autocast = self.dtype != torch.float32

    def _forward(self, x):
        out = self.model.predict(x) if hasattr(self.model, "predict") else self.model(x)
        return out[:, 0]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Foreground probabilities for a batch.

        Args:
            batch: (N, S, S, 3) uint8 RGB at the model's input size.

        Returns:
            (N, S, S) float32 probabilities in [0, 1].
        """
        torch = self._torch
        with torch.inference_mode():
            x = preprocess(batch, self.spec).to(self.device).to(memory_format=torch.channels_last)
            if self._autocast:
                with torch.autocast(self.device.type, dtype=self.dtype):
                    y = self._forward(x)
            else:
                y = self._forward(x)
            return y.float().clamp_(0, 1).cpu().numpy()
