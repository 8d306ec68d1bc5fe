"""IS-Net (Qin et al., "Highly Accurate Dichotomous Image Segmentation", ECCV 2022) in PyTorch.

This is the network behind the ``isnet-general-use`` weights of the DIS project and behind
briaai's RMBG-1.4. Module names, parameter names and buffer shapes follow the published
checkpoints exactly (``conv_in.weight``, ``stage1.rebnconvin.conv_s1.weight``,
``stage5d.rebnconv3d.bn_s1.running_var``, ``side1.bias``, ...), so a checkpoint's state
dict loads with ``strict=True``.

Layout: a stride-2 stem convolution, a six-stage encoder of residual U-blocks (RSU-7,
RSU-6, RSU-5, RSU-4, then two dilated RSU-4F) joined by 2x2 max pooling, a five-stage
decoder of the same blocks fed with the upsampled deeper decoder output concatenated with
the matching encoder feature, and six 3x3 side convolutions whose logits are upsampled to
the input size and passed through a sigmoid. The first side output is the prediction.

Every operation works per sample, so any batch size and any input height and width are
accepted (pooling rounds up and every upsampling targets the exact size of the skip
feature). The input size and normalisation the published weights expect are in their
records in :mod:`pipeline.models.registry` (``isnet-general-use``, ``rmbg-1.4``).
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.rsu import RSU, RSU4F, halve, resize_to


class ISNetDIS(nn.Module):
    """The IS-Net segmentation network (the ``isnet-general-use`` / RMBG-1.4 layout).

    Args:
        in_ch: Input channels (3 for RGB).
        out_ch: Channels of every side output (1 for a foreground probability map).
    """

    def __init__(self, in_ch: int = 3, out_ch: int = 1) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_ch, 64, 3, stride=2, padding=1)
        # Present in the original network (no parameters) but not applied by its forward
        # pass: the stem only halves the resolution through the stride-2 convolution.
        self.pool_in = nn.MaxPool2d(2, stride=2, ceil_mode=True)

        self.stage1 = RSU(7, 64, 32, 64)
        self.stage2 = RSU(6, 64, 32, 128)
        self.stage3 = RSU(5, 128, 64, 256)
        self.stage4 = RSU(4, 256, 128, 512)
        self.stage5 = RSU4F(512, 256, 512)
        self.stage6 = RSU4F(512, 256, 512)

        self.stage5d = RSU4F(1024, 256, 512)
        self.stage4d = RSU(4, 1024, 128, 256)
        self.stage3d = RSU(5, 512, 64, 128)
        self.stage2d = RSU(6, 256, 32, 64)
        self.stage1d = RSU(7, 128, 16, 64)

        self.side1 = nn.Conv2d(64, out_ch, 3, padding=1)
        self.side2 = nn.Conv2d(64, out_ch, 3, padding=1)
        self.side3 = nn.Conv2d(128, out_ch, 3, padding=1)
        self.side4 = nn.Conv2d(256, out_ch, 3, padding=1)
        self.side5 = nn.Conv2d(512, out_ch, 3, padding=1)
        self.side6 = nn.Conv2d(512, out_ch, 3, padding=1)

    def decode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Runs encoder and decoder and returns the features the side heads read.

        Args:
            x: Normalised images (N, in_ch, H, W).

        Returns:
            Six feature maps, finest first: the decoder outputs of stages 1d to 5d at
            resolutions H/2 ... H/32 (rounded up), then the encoder's stage-6 output at
            H/64.
        """
        e1 = self.stage1(self.conv_in(x))
        e2 = self.stage2(halve(e1))
        e3 = self.stage3(halve(e2))
        e4 = self.stage4(halve(e3))
        e5 = self.stage5(halve(e4))
        e6 = self.stage6(halve(e5))

        d5 = self.stage5d(torch.cat((resize_to(e6, e5), e5), 1))
        d4 = self.stage4d(torch.cat((resize_to(d5, e4), e4), 1))
        d3 = self.stage3d(torch.cat((resize_to(d4, e3), e3), 1))
        d2 = self.stage2d(torch.cat((resize_to(d3, e2), e2), 1))
        d1 = self.stage1d(torch.cat((resize_to(d2, e1), e1), 1))
        return [d1, d2, d3, d4, d5, e6]

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Computes all side outputs, as the original network's forward pass does.

        Args:
            x: Normalised images (N, in_ch, H, W).

        Returns:
            A pair ``(maps, features)``: ``maps`` holds the six side outputs after the
            sigmoid, each (N, out_ch, H, W), finest first (``maps[0]`` is the prediction);
            ``features`` holds the six feature maps described in :meth:`decode`.
        """
        features = self.decode(x)
        heads = (self.side1, self.side2, self.side3, self.side4, self.side5, self.side6)
        maps = [torch.sigmoid(resize_to(head(f), x)) for head, f in zip(heads, features)]
        return maps, features

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Computes only the final probability map.

        Args:
            x: Normalised images (N, in_ch, H, W).

        Returns:
            Foreground probabilities in [0, 1], shape (N, out_ch, H, W); equal to
            ``forward(x)[0][0]`` without evaluating the five auxiliary heads.
        """
        finest = self.decode(x)[0]
        return torch.sigmoid(resize_to(self.side1(finest), x))
