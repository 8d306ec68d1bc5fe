"""U²-Net-p (Qin et al., 2020), the small salient-object model, in PyTorch.

The module layout and state-dict keys are those of the published ``u2netp.pth``
(``stage1.rebnconvin.conv_s1.weight``, ``...bn_s1.running_mean``, ``side1.weight``,
``outconv.weight``, ...), so that checkpoint loads unchanged; the shipped ONNX export is
imported by :mod:`pipeline.models.u2netp_weights`. Input size and normalisation are in the
``u2netp`` record of :mod:`pipeline.models.registry`.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.rsu import RSU, RSU4F, halve, resize_to


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
        hx2 = self.stage2(halve(hx1))
        hx3 = self.stage3(halve(hx2))
        hx4 = self.stage4(halve(hx3))
        hx5 = self.stage5(halve(hx4))
        hx6 = self.stage6(halve(hx5))
        hx5d = self.stage5d(torch.cat((resize_to(hx6, hx5), hx5), 1))
        hx4d = self.stage4d(torch.cat((resize_to(hx5d, hx4), hx4), 1))
        hx3d = self.stage3d(torch.cat((resize_to(hx4d, hx3), hx3), 1))
        hx2d = self.stage2d(torch.cat((resize_to(hx3d, hx2), hx2), 1))
        hx1d = self.stage1d(torch.cat((resize_to(hx2d, hx1), hx1), 1))
        d1 = self.side1(hx1d)
        sides = [d1] + [resize_to(getattr(self, f"side{i}")(h), d1) for i, h in zip(range(2, 7), (hx2d, hx3d, hx4d, hx5d, hx6))]
        d0 = self.outconv(torch.cat(sides, 1))
        return [d0, *sides]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fused foreground probability (N, 1, H, W) for a normalised batch (N, 3, H, W)."""
        return torch.sigmoid(self._logits(x)[0])

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """All seven sigmoid outputs (d0 fused, then d1..d6), as the original network returns them."""
        return tuple(torch.sigmoid(d) for d in self._logits(x))
