"""U²-Net-p (Qin et al., 2020), the small salient-object model, in PyTorch.

The module layout and state-dict keys are those of the published ``u2netp.pth``
(``stage1.rebnconvin.conv_s1.weight``, ``...bn_s1.running_mean``, ``side1.weight``,
``outconv.weight``, ...), so that checkpoint loads unchanged; the shipped ONNX export is
imported by :mod:`pipeline.models.u2netp_weights`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

INPUT_SIZE = 320
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class REBNCONV(nn.Module):
    """3x3 convolution (padding = dilation) + BatchNorm + ReLU."""

    def __init__(self, in_ch: int, out_ch: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv_s1 = nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation)
        self.bn_s1 = nn.BatchNorm2d(out_ch)
        self.relu_s1 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu_s1(self.bn_s1(self.conv_s1(x)))


def _up_like(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=target.shape[2:], mode="bilinear", align_corners=False)


def _pool(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, 2, stride=2, ceil_mode=True)


class RSU(nn.Module):
    """Residual U-block of the given height (RSU-7 ... RSU-4): pooling encoder, dilated bottom.

    Args:
        height: Number of encoder levels including the input level (7, 6, 5 or 4).
        in_ch: Input channels.
        mid_ch: Channels inside the block.
        out_ch: Output channels.
    """

    def __init__(self, height: int, in_ch: int, mid_ch: int, out_ch: int) -> None:
        super().__init__()
        self.height = height
        self.rebnconvin = REBNCONV(in_ch, out_ch)
        self.rebnconv1 = REBNCONV(out_ch, mid_ch)
        for i in range(2, height):
            setattr(self, f"rebnconv{i}", REBNCONV(mid_ch, mid_ch))
        setattr(self, f"rebnconv{height}", REBNCONV(mid_ch, mid_ch, dilation=2))
        for i in range(height - 1, 1, -1):
            setattr(self, f"rebnconv{i}d", REBNCONV(2 * mid_ch, mid_ch))
        self.rebnconv1d = REBNCONV(2 * mid_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hxin = self.rebnconvin(x)
        enc = [self.rebnconv1(hxin)]
        for i in range(2, self.height):
            enc.append(getattr(self, f"rebnconv{i}")(_pool(enc[-1])))
        hx = getattr(self, f"rebnconv{self.height}")(enc[-1])
        for i in range(self.height - 1, 1, -1):
            hx = getattr(self, f"rebnconv{i}d")(torch.cat((hx, enc[i - 1]), 1))
            hx = _up_like(hx, enc[i - 2])
        return self.rebnconv1d(torch.cat((hx, enc[0]), 1)) + hxin


class RSU4F(nn.Module):
    """Residual U-block without pooling: dilations 1, 2, 4, 8 instead of resolution changes."""

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
        hxin = self.rebnconvin(x)
        hx1 = self.rebnconv1(hxin)
        hx2 = self.rebnconv2(hx1)
        hx3 = self.rebnconv3(hx2)
        hx4 = self.rebnconv4(hx3)
        hx3d = self.rebnconv3d(torch.cat((hx4, hx3), 1))
        hx2d = self.rebnconv2d(torch.cat((hx3d, hx2), 1))
        return self.rebnconv1d(torch.cat((hx2d, hx1), 1)) + hxin


class U2NetP(nn.Module):
    """U²-Net-p: six encoder stages, five decoder stages, six side outputs fused by a 1x1 conv."""

    def __init__(self, in_ch: int = 3, out_ch: int = 1) -> None:
        super().__init__()
        self.stage1 = RSU(7, in_ch, 16, 64)
        self.stage2 = RSU(6, 64, 16, 64)
        self.stage3 = RSU(5, 64, 16, 64)
        self.stage4 = RSU(4, 64, 16, 64)
        self.stage5 = RSU4F(64, 16, 64)
        self.stage6 = RSU4F(64, 16, 64)
        self.stage5d = RSU4F(128, 16, 64)
        self.stage4d = RSU(4, 128, 16, 64)
        self.stage3d = RSU(5, 128, 16, 64)
        self.stage2d = RSU(6, 128, 16, 64)
        self.stage1d = RSU(7, 128, 16, 64)
        for i in range(1, 7):
            setattr(self, f"side{i}", nn.Conv2d(64, out_ch, 3, padding=1))
        self.outconv = nn.Conv2d(6 * out_ch, out_ch, 1)

    def _logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        hx1 = self.stage1(x)
        hx2 = self.stage2(_pool(hx1))
        hx3 = self.stage3(_pool(hx2))
        hx4 = self.stage4(_pool(hx3))
        hx5 = self.stage5(_pool(hx4))
        hx6 = self.stage6(_pool(hx5))
        hx5d = self.stage5d(torch.cat((_up_like(hx6, hx5), hx5), 1))
        hx4d = self.stage4d(torch.cat((_up_like(hx5d, hx4), hx4), 1))
        hx3d = self.stage3d(torch.cat((_up_like(hx4d, hx3), hx3), 1))
        hx2d = self.stage2d(torch.cat((_up_like(hx3d, hx2), hx2), 1))
        hx1d = self.stage1d(torch.cat((_up_like(hx2d, hx1), hx1), 1))
        d1 = self.side1(hx1d)
        sides = [d1] + [
            _up_like(getattr(self, f"side{i}")(h), d1)
            for i, h in zip(range(2, 7), (hx2d, hx3d, hx4d, hx5d, hx6))
        ]
        d0 = self.outconv(torch.cat(sides, 1))
        return [d0, *sides]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fused foreground probability (N, 1, H, W) for a normalised batch (N, 3, H, W)."""
        return torch.sigmoid(self._logits(x)[0])

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """All seven sigmoid outputs (d0 fused, then d1..d6), as the original network returns them."""
        return tuple(torch.sigmoid(d) for d in self._logits(x))


def preprocess(batch: np.ndarray) -> torch.Tensor:
    """Normalise model-sized uint8 RGB images as U²-Net (and rembg) do.

    Each image is divided by its own maximum value, then standardised per channel.

    Args:
        batch: (N, H, W, 3) uint8.

    Returns:
        (N, 3, H, W) float32.
    """
    from pipeline.models.registry import get_spec
    from pipeline.segment import preprocess as normalise

    return normalise(batch, get_spec("u2netp"))
