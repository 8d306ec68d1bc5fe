"""Residual U-blocks shared by U²-Net(-p) and IS-Net (same module and parameter names as the
published checkpoints: ``rebnconvin``, ``rebnconv1``..., ``rebnconv1d``, ``conv_s1``, ``bn_s1``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class REBNCONV(nn.Module):
    """3x3 convolution (padding equal to the dilation) followed by BatchNorm and ReLU.

    Args:
        in_ch: Input channels.
        out_ch: Output channels.
        dilation: Dilation of the convolution; the spatial size is preserved.
    """

    def __init__(self, in_ch: int, out_ch: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv_s1 = nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation)
        self.bn_s1 = nn.BatchNorm2d(out_ch)
        self.relu_s1 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Applies convolution, normalisation and activation.

        Args:
            x: Feature map (N, in_ch, H, W).

        Returns:
            Feature map (N, out_ch, H, W).
        """
        return self.relu_s1(self.bn_s1(self.conv_s1(x)))


def resize_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinearly resizes ``x`` to the spatial size of ``like`` (half-pixel centres)."""
    return F.interpolate(x, size=like.shape[2:], mode="bilinear", align_corners=False)


def halve(x: torch.Tensor) -> torch.Tensor:
    """2x2 max pooling with stride 2 that keeps a trailing odd row or column."""
    return F.max_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)


class RSU(nn.Module):
    """Residual U-block RSU-L: a small U-Net whose output is added to its input projection.

    The encoder has ``height - 1`` convolution levels separated by max pooling, the bottom
    level uses dilation 2 without pooling, and the decoder mirrors the encoder with skip
    concatenations. ``height`` 7, 6, 5 and 4 give the RSU-7 ... RSU-4 blocks of the paper.

    Args:
        height: Number of convolution levels on the way down, the dilated bottom included.
        in_ch: Input channels.
        mid_ch: Channels inside the U.
        out_ch: Output channels.
    """

    def __init__(self, height: int, in_ch: int, mid_ch: int, out_ch: int) -> None:
        super().__init__()
        if height < 3:
            raise ValueError(f"RSU height must be at least 3, got {height}")
        self.height = height
        self.rebnconvin = REBNCONV(in_ch, out_ch)
        self.rebnconv1 = REBNCONV(out_ch, mid_ch)
        for level in range(2, height):
            setattr(self, f"rebnconv{level}", REBNCONV(mid_ch, mid_ch))
        setattr(self, f"rebnconv{height}", REBNCONV(mid_ch, mid_ch, dilation=2))
        for level in range(height - 1, 1, -1):
            setattr(self, f"rebnconv{level}d", REBNCONV(2 * mid_ch, mid_ch))
        self.rebnconv1d = REBNCONV(2 * mid_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Runs the block.

        Args:
            x: Feature map (N, in_ch, H, W).

        Returns:
            Feature map (N, out_ch, H, W).
        """
        top = self.rebnconvin(x)
        skips = [self.rebnconv1(top)]
        for level in range(2, self.height):
            skips.append(getattr(self, f"rebnconv{level}")(halve(skips[-1])))
        y = getattr(self, f"rebnconv{self.height}")(skips[-1])
        for level in range(self.height - 1, 1, -1):
            y = getattr(self, f"rebnconv{level}d")(torch.cat((y, skips[level - 1]), 1))
            y = resize_to(y, skips[level - 2])
        return self.rebnconv1d(torch.cat((y, skips[0]), 1)) + top


class RSU4F(nn.Module):
    """Residual U-block without resolution changes: dilations 1, 2, 4, 8 replace pooling.

    Args:
        in_ch: Input channels.
        mid_ch: Channels inside the block.
        out_ch: Output channels.
    """

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int) -> None:
        super().__init__()
        self.rebnconvin = REBNCONV(in_ch, out_ch)
        self.rebnconv1 = REBNCONV(out_ch, mid_ch)
        self.rebnconv2 = REBNCONV(mid_ch, mid_ch, dilation=2)
        self.rebnconv3 = REBNCONV(mid_ch, mid_ch, dilation=4)
        self.rebnconv4 = REBNCONV(mid_ch, mid_ch, dilation=8)
        self.rebnconv3d = REBNCONV(2 * mid_ch, mid_ch, dilation=4)
        self.rebnconv2d = REBNCONV(2 * mid_ch, mid_ch, dilation=2)
        self.rebnconv1d = REBNCONV(2 * mid_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Runs the block.

        Args:
            x: Feature map (N, in_ch, H, W).

        Returns:
            Feature map (N, out_ch, H, W).
        """
        top = self.rebnconvin(x)
        e1 = self.rebnconv1(top)
        e2 = self.rebnconv2(e1)
        e3 = self.rebnconv3(e2)
        y = self.rebnconv4(e3)
        y = self.rebnconv3d(torch.cat((y, e3), 1))
        y = self.rebnconv2d(torch.cat((y, e2), 1))
        return self.rebnconv1d(torch.cat((y, e1), 1)) + top
