"""U²-Net-p (Qin et al., 2020, "U²-Net: Going deeper with nested U-structure"), in PyTorch.

The small (1.1 M parameters) salient-object network. Module names, parameter names and
shapes follow the published ``u2netp.pth`` exactly (``stage1.rebnconvin.conv_s1.weight``,
``stage1.rebnconvin.bn_s1.running_mean``, ..., ``side1.weight``, ``outconv.weight``), so that
checkpoint loads with ``strict=True``. The ONNX export shipped with ``rembg`` is imported by
:mod:`pipeline.models.u2netp_weights`.

The network accepts any input size: every decoder level is upsampled (bilinear,
``align_corners=False``) to the size of its skip tensor, and pooling rounds up
(``ceil_mode=True``), as in the original.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

INPUT_SIZE = 320
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _upsample_like(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinearly resizes ``x`` to the spatial size of ``like``."""
    return F.interpolate(x, size=like.shape[2:], mode="bilinear", align_corners=False)


def _downsample(x: torch.Tensor) -> torch.Tensor:
    """2x2 max pooling, stride 2, keeping a partial last window (ceil mode)."""
    return F.max_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)


class REBNCONV(nn.Module):
    """3x3 convolution (padding equal to the dilation), BatchNorm, ReLU.

    Args:
        in_ch: Input channels.
        out_ch: Output channels.
        dirate: Dilation rate.
    """

    def __init__(self, in_ch: int, out_ch: int, dirate: int = 1) -> None:
        super().__init__()
        self.conv_s1 = nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=dirate, dilation=dirate)
        self.bn_s1 = nn.BatchNorm2d(out_ch)
        self.relu_s1 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Applies conv, BatchNorm and ReLU."""
        return self.relu_s1(self.bn_s1(self.conv_s1(x)))


class _RSU(nn.Module):
    """Residual U-block of a given height (RSU-7, RSU-6, RSU-5, RSU-4).

    An input convolution, then a small U-Net whose encoder has ``height - 1`` levels joined by
    max pooling, a dilated (rate 2) convolution at the bottom, and a decoder that upsamples to
    each skip tensor; the block's output is the U-Net's output plus the input convolution's.

    Submodules are ``rebnconvin``, ``rebnconv1`` ... ``rebnconv{height}`` and
    ``rebnconv{height-1}d`` ... ``rebnconv1d``, registered in that order (the published one).

    Args:
        height: Block height (7, 6, 5 or 4).
        in_ch: Input channels.
        mid_ch: Channels inside the U-Net.
        out_ch: Output channels.
    """

    def __init__(self, height: int, in_ch: int, mid_ch: int, out_ch: int) -> None:
        super().__init__()
        self.height = height
        self.rebnconvin = REBNCONV(in_ch, out_ch)
        self.rebnconv1 = REBNCONV(out_ch, mid_ch)
        for level in range(2, height):
            self.add_module(f"rebnconv{level}", REBNCONV(mid_ch, mid_ch))
        self.add_module(f"rebnconv{height}", REBNCONV(mid_ch, mid_ch, dirate=2))
        for level in range(height - 1, 1, -1):
            self.add_module(f"rebnconv{level}d", REBNCONV(2 * mid_ch, mid_ch))
        self.rebnconv1d = REBNCONV(2 * mid_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Runs the block; the output has the input's spatial size and ``out_ch`` channels."""
        hxin = self.rebnconvin(x)
        skips = [self.rebnconv1(hxin)]  # skips[k] is the output of level k + 1
        for level in range(2, self.height):
            skips.append(self.get_submodule(f"rebnconv{level}")(_downsample(skips[-1])))
        hx = self.get_submodule(f"rebnconv{self.height}")(skips[-1])
        for level in range(self.height - 1, 1, -1):
            hx = self.get_submodule(f"rebnconv{level}d")(torch.cat((hx, skips[level - 1]), dim=1))
            hx = _upsample_like(hx, skips[level - 2])
        return self.rebnconv1d(torch.cat((hx, skips[0]), dim=1)) + hxin


class RSU7(_RSU):
    """RSU block of height 7 (see :class:`_RSU`)."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int) -> None:
        super().__init__(7, in_ch, mid_ch, out_ch)


class RSU6(_RSU):
    """RSU block of height 6 (see :class:`_RSU`)."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int) -> None:
        super().__init__(6, in_ch, mid_ch, out_ch)


class RSU5(_RSU):
    """RSU block of height 5 (see :class:`_RSU`)."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int) -> None:
        super().__init__(5, in_ch, mid_ch, out_ch)


class RSU4(_RSU):
    """RSU block of height 4 (see :class:`_RSU`)."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int) -> None:
        super().__init__(4, in_ch, mid_ch, out_ch)


class RSU4F(nn.Module):
    """RSU-4 without resolution changes: dilation rates 1, 2, 4, 8 replace pooling.

    Used at the two coarsest levels, where the feature maps are already small.

    Args:
        in_ch: Input channels.
        mid_ch: Channels inside the block.
        out_ch: Output channels.
    """

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int) -> None:
        super().__init__()
        self.rebnconvin = REBNCONV(in_ch, out_ch)
        self.rebnconv1 = REBNCONV(out_ch, mid_ch)
        self.rebnconv2 = REBNCONV(mid_ch, mid_ch, dirate=2)
        self.rebnconv3 = REBNCONV(mid_ch, mid_ch, dirate=4)
        self.rebnconv4 = REBNCONV(mid_ch, mid_ch, dirate=8)
        self.rebnconv3d = REBNCONV(2 * mid_ch, mid_ch, dirate=4)
        self.rebnconv2d = REBNCONV(2 * mid_ch, mid_ch, dirate=2)
        self.rebnconv1d = REBNCONV(2 * mid_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Runs the block; the output has the input's spatial size and ``out_ch`` channels."""
        hxin = self.rebnconvin(x)
        hx1 = self.rebnconv1(hxin)
        hx2 = self.rebnconv2(hx1)
        hx3 = self.rebnconv3(hx2)
        hx4 = self.rebnconv4(hx3)
        hx3d = self.rebnconv3d(torch.cat((hx4, hx3), dim=1))
        hx2d = self.rebnconv2d(torch.cat((hx3d, hx2), dim=1))
        return self.rebnconv1d(torch.cat((hx2d, hx1), dim=1)) + hxin


class U2NetP(nn.Module):
    """U²-Net-p: six RSU encoder stages, five decoder stages, six side outputs and their fusion.

    Args:
        in_ch: Input channels.
        out_ch: Output channels (maps per side output).
    """

    def __init__(self, in_ch: int = 3, out_ch: int = 1) -> None:
        super().__init__()
        self.stage1 = RSU7(in_ch, 16, 64)
        self.stage2 = RSU6(64, 16, 64)
        self.stage3 = RSU5(64, 16, 64)
        self.stage4 = RSU4(64, 16, 64)
        self.stage5 = RSU4F(64, 16, 64)
        self.stage6 = RSU4F(64, 16, 64)
        self.stage5d = RSU4F(128, 16, 64)
        self.stage4d = RSU4(128, 16, 64)
        self.stage3d = RSU5(128, 16, 64)
        self.stage2d = RSU6(128, 16, 64)
        self.stage1d = RSU7(128, 16, 64)
        self.side1 = nn.Conv2d(64, out_ch, kernel_size=3, padding=1)
        self.side2 = nn.Conv2d(64, out_ch, kernel_size=3, padding=1)
        self.side3 = nn.Conv2d(64, out_ch, kernel_size=3, padding=1)
        self.side4 = nn.Conv2d(64, out_ch, kernel_size=3, padding=1)
        self.side5 = nn.Conv2d(64, out_ch, kernel_size=3, padding=1)
        self.side6 = nn.Conv2d(64, out_ch, kernel_size=3, padding=1)
        self.outconv = nn.Conv2d(6 * out_ch, out_ch, kernel_size=1)

    def _logits(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Pre-sigmoid outputs (d0 fused, d1 ... d6), all at the input's spatial size."""
        hx1 = self.stage1(x)
        hx2 = self.stage2(_downsample(hx1))
        hx3 = self.stage3(_downsample(hx2))
        hx4 = self.stage4(_downsample(hx3))
        hx5 = self.stage5(_downsample(hx4))
        hx6 = self.stage6(_downsample(hx5))

        hx5d = self.stage5d(torch.cat((_upsample_like(hx6, hx5), hx5), dim=1))
        hx4d = self.stage4d(torch.cat((_upsample_like(hx5d, hx4), hx4), dim=1))
        hx3d = self.stage3d(torch.cat((_upsample_like(hx4d, hx3), hx3), dim=1))
        hx2d = self.stage2d(torch.cat((_upsample_like(hx3d, hx2), hx2), dim=1))
        hx1d = self.stage1d(torch.cat((_upsample_like(hx2d, hx1), hx1), dim=1))

        d1 = self.side1(hx1d)
        d2 = _upsample_like(self.side2(hx2d), d1)
        d3 = _upsample_like(self.side3(hx3d), d1)
        d4 = _upsample_like(self.side4(hx4d), d1)
        d5 = _upsample_like(self.side5(hx5d), d1)
        d6 = _upsample_like(self.side6(hx6), d1)
        d0 = self.outconv(torch.cat((d1, d2, d3, d4, d5, d6), dim=1))
        return d0, d1, d2, d3, d4, d5, d6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fused foreground probability.

        Args:
            x: Normalised images, float (N, 3, H, W) (see :func:`preprocess`).

        Returns:
            Probabilities in [0, 1], shape (N, 1, H, W).
        """
        return torch.sigmoid(self._logits(x)[0])

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """All seven outputs, as the original network and its ONNX export return them.

        Args:
            x: Normalised images, float (N, 3, H, W).

        Returns:
            Sigmoid maps (d0 fused, d1 ... d6), each (N, 1, H, W).
        """
        return tuple(torch.sigmoid(d) for d in self._logits(x))


def preprocess(batch: np.ndarray) -> torch.Tensor:
    """Normalises model-sized RGB images exactly as rembg does for U²-Net.

    Each image is divided by its own maximum value (an all-black image by 1 instead, so no
    NaN), then each channel is standardised with :data:`MEAN` and :data:`STD`. The arithmetic
    is done in float64 and rounded to float32 once at the end, as rembg does, so the result is
    bit-identical to rembg's input tensor.

    Args:
        batch: uint8 array (N, H, W, 3), RGB, already resized to the model's input size.

    Returns:
        float32 tensor (N, 3, H, W).

    Raises:
        ValueError: If ``batch`` is not (N, H, W, 3).
    """
    batch = np.asarray(batch)
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"expected an (N, H, W, 3) batch, got shape {batch.shape}")
    peak = batch.reshape(batch.shape[0], -1).max(axis=1, initial=0).astype(np.float64)
    peak[peak == 0] = 1.0
    scaled = batch / peak[:, None, None, None]
    normalised = (scaled - np.asarray(MEAN)) / np.asarray(STD)
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(0, 3, 1, 2), dtype=np.float32))
