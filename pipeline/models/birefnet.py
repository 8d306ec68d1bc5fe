"""BiRefNet (Zheng et al., "Bilateral Reference for High-Resolution Dichotomous Image
Segmentation", CAAI AIR 2024) in PyTorch, in the configuration of the released weights.

This is the network behind ZhengPeng7/BiRefNet (Swin-L backbone, ``swin_l``),
ZhengPeng7/BiRefNet_lite (Swin-T, ``swin_t``) and briaai/RMBG-2.0 (Swin-L). Module and
parameter names follow the published checkpoints (``bb.layers.2.blocks.5.attn.qkv.weight``,
``squeeze_module.0.dec_att.aspp_deforms.2.atrous_conv.offset_conv.weight``,
``decoder.gdt_convs_attn_4.0.bias``, ...), so their state dicts load with ``strict=True``
once :func:`map_published_keys` has removed the ``module.`` / ``_orig_mod.`` prefixes that
checkpoints saved from a DDP-wrapped or compiled model carry.

Layout (the released models' settings: multi-scale input ``cat``, three context features,
a squeeze block, split image patches fed to the decoder, deformable ASPP attention, and the
gradient-reference gates):

* Encoder: a Swin Transformer v1 runs on the image and on a copy bilinearly halved (corners
  aligned); each of its four stage outputs (strides 4, 8, 16, 32) is concatenated with the
  half-size run's output resized to it, doubling the channels. The three shallower features,
  resized to the deepest one, are concatenated in front of it, and one decoder block
  (``squeeze_module``) brings that back to the deepest feature's channels. The backbone pads
  each window attention to whole windows and each patch merging to an even size, so any
  size works there.
* Decoder: four levels, deepest first. Before each decoder block the image is cut into a
  grid of patches the size of the current feature map and stacked on the channel axis in
  one of two orders (``PatchOrder``, see :func:`image_patches`), which must be the order the
  weights were trained with; a small two-convolution block (``ipt_blkN``) turns that stack
  into extra channels concatenated to the features. A decoder block is a 3x3 convolution,
  BatchNorm and ReLU, a deformable ASPP (1x1 convolution, three modulated deformable
  convolutions of sizes 1, 3 and 7, and global pooling, fused by a 1x1 convolution), then a
  3x3 convolution and BatchNorm. The outputs of the three deeper levels are multiplied by a
  sigmoid gate computed from them (``gdt_convs_N`` then ``gdt_convs_attn_N``), upsampled and
  added to a 1x1 lateral projection of the next encoder feature. The last level is
  upsampled to the input size, joined with the full image through ``ipt_blk1``, and a 1x1
  convolution gives one logit per pixel.

Training-only heads exist with their parameters so that published checkpoints load
strictly, but inference never runs them: the multi-scale supervision convolutions
(``conv_ms_spvn_N``) and the gradient predictors (``gdt_convs_pred_N``).

Every operation works per sample, so any batch size is accepted. Height and width must be
multiples of ``SIZE_MULTIPLE`` (the patch grids divide the image exactly). The input size and
normalisation the published weights expect are in their records in
:mod:`pipeline.models.registry` (``birefnet-general``, ``birefnet-lite``, ``rmbg-2.0``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import deform_conv2d

SIZE_MULTIPLE = 32

_PUBLISHED_PREFIXES = ("module.", "_orig_mod.")

PatchOrder = Literal["current", "legacy"]


@dataclass(frozen=True)
class SwinShape:
    """The hyper-parameters of one Swin Transformer v1 backbone.

    Attributes:
        embed_dim: Channels of the first stage (doubled at each later stage).
        depths: Transformer blocks per stage.
        num_heads: Attention heads per stage.
        window: Side of the square attention windows.
    """

    embed_dim: int
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int]
    window: int


VARIANTS: dict[str, SwinShape] = {
    "swin_l": SwinShape(192, (2, 2, 18, 2), (6, 12, 24, 48), 12),
    "swin_t": SwinShape(96, (2, 2, 6, 2), (3, 6, 12, 24), 7),
}


def resize_to(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize with aligned corners (BiRefNet's only resampling); a no-op at equal size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def image_patches(image: torch.Tensor, size: tuple[int, int] | torch.Size, order: PatchOrder = "current") -> torch.Tensor:
    """Cuts images into a grid of ``size`` patches stacked on the channel axis.

    The reference changed the order in its commit 5198d3f (2024-11-05). Weights trained
    before it (BiRefNet general and lite, RMBG-2.0) need ``legacy``, later ones ``current``;
    the other order gives wrong outputs without any error.

    Args:
        image: Images (N, C, H, W) whose sides are multiples of ``size``.
        size: Patch height and width.
        order: ``current``: channel ``c * rows * cols + row * cols + col`` holds channel ``c``
            of the patch at (``row``, ``col``), the reference since 5198d3f. ``legacy``: the
            patches column by column, each with its channels innermost, channel
            ``(col * rows + row) * C + c``, the reference before it.

    Returns:
        (N, C * rows * cols, h, w).
    """
    n, c, height, width = image.shape
    h, w = size
    rows, cols = height // h, width // w
    grid = image.reshape(n, c, rows, h, cols, w)
    if order == "legacy":
        grid = grid.permute(0, 4, 2, 1, 3, 5)
    else:
        grid = grid.permute(0, 1, 2, 4, 3, 5)
    return grid.reshape(n, c * rows * cols, h, w)


# --- Swin Transformer v1 backbone (tensors are channels-last, (N, H, W, C), inside it) -----


def _to_windows(x: torch.Tensor, window: int) -> torch.Tensor:
    n, h, w, c = x.shape
    x = x.reshape(n, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, (h // window) * (w // window), window * window, c)


def _from_windows(x: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    n, _, _, c = x.shape
    x = x.reshape(n, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h, w, c)


def _shift_mask(h: int, w: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    """Additive attention mask (windows, window², window²) of the shifted-window blocks.

    After the cyclic shift, the last ``window`` rows and columns hold pixels from up to three
    unrelated regions per axis; tokens may attend only within their own region.
    """

    def regions(length: int) -> torch.Tensor:
        index = torch.arange(length, device=device)
        return (index >= length - window).long() + (index >= length - shift).long()

    label = (regions(h)[:, None] * 3 + regions(w)[None, :]).float()
    label = _to_windows(label[None, :, :, None], window)[0, :, :, 0]
    different = label[:, None, :] != label[:, :, None]
    return torch.zeros(different.shape, device=device).masked_fill(different, float("-inf"))


def _relative_position_index(window: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    offset = coords[:, :, None] - coords[:, None, :] + (window - 1)
    return offset[0] * (2 * window - 1) + offset[1]


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative position bias.

    Args:
        dim: Channels.
        window: Window side.
        num_heads: Attention heads.
    """

    def __init__(self, dim: int, window: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", _relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Attends within each window.

        Args:
            x: Tokens (N, windows, window², C).
            mask: Additive mask (windows, window², window²), or None.

        Returns:
            Tokens of the same shape.
        """
        n, windows, tokens, c = x.shape
        qkv = self.qkv(x).reshape(n, windows, tokens, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)
        bias = self.relative_position_bias_table[self.relative_position_index.flatten()]
        bias = bias.reshape(tokens, tokens, self.num_heads).permute(2, 0, 1)
        if mask is not None:
            bias = bias + mask[:, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(out.transpose(2, 3).reshape(n, windows, tokens, c))


class Mlp(nn.Module):
    """The transformer feed-forward: linear, GELU, linear.

    Args:
        dim: Input and output channels.
        hidden: Hidden channels.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Applies the feed-forward to the last axis."""
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """Pre-norm window attention (shifted by ``shift``) and feed-forward, both residual.

    The normalised map is zero-padded on the bottom and right to whole windows; the padding
    takes part in the attention and is cropped afterwards.

    Args:
        dim: Channels.
        num_heads: Attention heads.
        window: Window side.
        shift: Cyclic shift before the windows are cut (0 or ``window // 2``).
    """

    def __init__(self, dim: int, num_heads: int, window: int, shift: int) -> None:
        super().__init__()
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Runs the block.

        Args:
            x: Features (N, H, W, C).
            mask: The stage's shifted-window mask for the padded size.

        Returns:
            Features (N, H, W, C).
        """
        _, h, w, _ = x.shape
        window, shift = self.window, self.shift
        y = F.pad(self.norm1(x), (0, 0, 0, -w % window, 0, -h % window))
        padded_h, padded_w = y.shape[1:3]
        if shift:
            y = torch.roll(y, (-shift, -shift), (1, 2))
        y = self.attn(_to_windows(y, window), mask if shift else None)
        y = _from_windows(y, window, padded_h, padded_w)
        if shift:
            y = torch.roll(y, (shift, shift), (1, 2))
        x = x + y[:, :h, :w]
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """Halves the resolution: each 2x2 neighbourhood (zero-padded to even size) becomes one
    token, normalised and projected from 4C to 2C channels.

    Args:
        dim: Input channels.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Merges (N, H, W, C) into (N, ceil(H/2), ceil(W/2), 2C)."""
        x = F.pad(x, (0, 0, 0, x.shape[2] % 2, 0, x.shape[1] % 2))
        x = torch.cat((x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]), -1)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """Transformer blocks alternating plain and shifted windows, then optional merging.

    Args:
        dim: Channels.
        depth: Number of blocks.
        num_heads: Attention heads.
        window: Window side.
        downsample: Whether a patch merging follows.
    """

    def __init__(self, dim: int, depth: int, num_heads: int, window: int, downsample: bool) -> None:
        super().__init__()
        self.window = window
        self.blocks = nn.ModuleList(SwinBlock(dim, num_heads, window, 0 if i % 2 == 0 else window // 2) for i in range(depth))
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Runs the stage on (N, H, W, C).

        Returns:
            The stage output and the next stage's input (the merged output, or the output
            itself for the last stage).
        """
        _, h, w, _ = x.shape
        padded_h, padded_w = -(-h // self.window) * self.window, -(-w // self.window) * self.window
        mask = _shift_mask(padded_h, padded_w, self.window, self.window // 2, x.device)
        for block in self.blocks:
            x = block(x, mask)
        return x, (self.downsample(x) if self.downsample is not None else x)


class PatchEmbed(nn.Module):
    """4x4 patches (the image zero-padded to multiples of 4) projected and normalised.

    Args:
        dim: Output channels.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, 4, stride=4)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embeds (N, 3, H, W) into (N, ceil(H/4), ceil(W/4), dim)."""
        x = F.pad(x, (0, -x.shape[3] % 4, 0, -x.shape[2] % 4))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class SwinBackbone(nn.Module):
    """Swin Transformer v1 returning the normalised output of each of its four stages.

    Args:
        shape: The variant's hyper-parameters.
    """

    def __init__(self, shape: SwinShape) -> None:
        super().__init__()
        dims = [shape.embed_dim * 2**i for i in range(4)]
        self.patch_embed = PatchEmbed(dims[0])
        self.layers = nn.ModuleList(
            SwinStage(dims[i], shape.depths[i], shape.num_heads[i], shape.window, downsample=i < 3) for i in range(4)
        )
        for i, dim in enumerate(dims):
            self.add_module(f"norm{i}", nn.LayerNorm(dim))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encodes images.

        Args:
            x: Images (N, 3, H, W).

        Returns:
            Four feature maps (N, C_i, H_i, W_i) at strides 4, 8, 16 and 32 (sizes rounded up).
        """
        x = self.patch_embed(x)
        features = []
        for i, layer in enumerate(self.layers):
            out, x = layer(x)
            features.append(getattr(self, f"norm{i}")(out).permute(0, 3, 1, 2))
        return features


# --- Decoder ------------------------------------------------------------------------------


class DeformableConv2d(nn.Module):
    """Modulated deformable convolution: offsets and a (0, 2) modulation predicted from the input.

    Args:
        in_ch: Input channels.
        out_ch: Output channels.
        kernel: Kernel side.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int) -> None:
        super().__init__()
        self.padding = kernel // 2
        self.offset_conv = nn.Conv2d(in_ch, 2 * kernel * kernel, kernel, padding=self.padding)
        self.modulator_conv = nn.Conv2d(in_ch, kernel * kernel, kernel, padding=self.padding)
        self.regular_conv = nn.Conv2d(in_ch, out_ch, kernel, padding=self.padding, bias=False)
        for conv in (self.offset_conv, self.modulator_conv):  # start as a plain convolution
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolves (N, in_ch, H, W) into (N, out_ch, H, W)."""
        return deform_conv2d(
            x,
            self.offset_conv(x),
            self.regular_conv.weight,
            self.regular_conv.bias,
            padding=self.padding,
            mask=2 * torch.sigmoid(self.modulator_conv(x)),
        )


class DeformableBranch(nn.Module):
    """One ASPP branch: deformable convolution, BatchNorm, ReLU.

    Args:
        in_ch: Input channels.
        out_ch: Output channels.
        kernel: Kernel side.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int) -> None:
        super().__init__()
        self.atrous_conv = DeformableConv2d(in_ch, out_ch, kernel)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Applies the branch."""
        return F.relu(self.bn(self.atrous_conv(x)))


class ASPPDeformable(nn.Module):
    """Deformable atrous spatial pyramid pooling: five parallel 256-channel branches
    (deformable 1x1, deformable 1x1, 3x3 and 7x7, and global average pooling) fused by a 1x1
    convolution, BatchNorm and ReLU.

    Args:
        channels: Input and output channels.
        branch_ch: Channels of each branch.
    """

    def __init__(self, channels: int, branch_ch: int = 256) -> None:
        super().__init__()
        self.aspp1 = DeformableBranch(channels, branch_ch, 1)
        self.aspp_deforms = nn.ModuleList(DeformableBranch(channels, branch_ch, k) for k in (1, 3, 7))
        self.global_avg_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, branch_ch, 1, bias=False),
            nn.BatchNorm2d(branch_ch),
            nn.ReLU(),
        )
        self.conv1 = nn.Conv2d(5 * branch_ch, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Applies the pyramid to (N, channels, H, W)."""
        branches = [self.aspp1(x), *(branch(x) for branch in self.aspp_deforms)]
        branches.append(self.global_avg_pool(x).expand_as(branches[0]))
        return F.relu(self.bn1(self.conv1(torch.cat(branches, 1))))


class BasicDecBlk(nn.Module):
    """Decoder block: 3x3 convolution to 64 channels, BatchNorm, ReLU, deformable ASPP, then a
    3x3 convolution and BatchNorm.

    Args:
        in_ch: Input channels.
        out_ch: Output channels.
        inter_ch: Channels inside the block.
    """

    def __init__(self, in_ch: int, out_ch: int, inter_ch: int = 64) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_ch, inter_ch, 3, padding=1)
        self.dec_att = ASPPDeformable(inter_ch)
        self.conv_out = nn.Conv2d(inter_ch, out_ch, 3, padding=1)
        self.bn_in = nn.BatchNorm2d(inter_ch)
        self.bn_out = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Applies the block."""
        x = self.dec_att(F.relu(self.bn_in(self.conv_in(x))))
        return self.bn_out(self.conv_out(x))


class BasicLatBlk(nn.Module):
    """Lateral 1x1 projection of an encoder feature.

    Args:
        in_ch: Input channels.
        out_ch: Output channels.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Applies the projection."""
        return self.conv(x)


class SimpleConvs(nn.Module):
    """Two 3x3 convolutions without activation (the image-patch input blocks).

    Args:
        in_ch: Input channels.
        out_ch: Output channels.
        inter_ch: Channels between the convolutions.
    """

    def __init__(self, in_ch: int, out_ch: int, inter_ch: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, inter_ch, 3, padding=1)
        self.conv_out = nn.Conv2d(inter_ch, out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Applies both convolutions."""
        return self.conv_out(self.conv1(x))


def _conv1x1_head(in_ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, 1, 1))


class Decoder(nn.Module):
    """The four-level decoder described in the module docstring.

    Args:
        channels: Encoder channels, deepest first (after the multi-scale concatenation).
        patch_order: Channel order of the image patches (see :func:`image_patches`).
    """

    def __init__(self, channels: list[int], patch_order: PatchOrder = "current") -> None:
        super().__init__()
        self.patch_order = patch_order
        patch_out = [c // 8 for c in channels]
        # Inputs of ipt_blk5 ... ipt_blk1: the image cut into 32x32, 16x16, 8x8, 4x4 and 1x1
        # grids of patches (3 channels each).
        patch_in = [3 * grid * grid for grid in (32, 16, 8, 4, 1)]
        patch_out_of = [patch_out[0], patch_out[0], patch_out[1], patch_out[2], patch_out[3]]
        for index, (cin, cout) in zip((5, 4, 3, 2, 1), zip(patch_in, patch_out_of)):
            self.add_module(f"ipt_blk{index}", SimpleConvs(cin, cout))

        out = [*channels[1:], channels[3] // 2]
        block_in = [channels[i] + patch_out_of[i] for i in range(4)]
        for index, cin, cout in zip((4, 3, 2, 1), block_in, out):
            self.add_module(f"decoder_block{index}", BasicDecBlk(cin, cout))
        self.conv_out1 = _conv1x1_head(out[3] + patch_out[3])

        for index, cin, cout in zip((4, 3, 2), channels[1:], out):
            self.add_module(f"lateral_block{index}", BasicLatBlk(cin, cout))
        # Training-only: multi-scale supervision and gradient prediction (kept for loading).
        for index, cin in zip((4, 3, 2), out):
            self.add_module(f"conv_ms_spvn_{index}", nn.Conv2d(cin, 1, 1))
        gate_ch = 16
        for index, cin in zip((4, 3, 2), out):
            self.add_module(
                f"gdt_convs_{index}",
                nn.Sequential(nn.Conv2d(cin, gate_ch, 3, padding=1), nn.BatchNorm2d(gate_ch), nn.ReLU()),
            )
        for kind in ("pred", "attn"):
            for index in (4, 3, 2):
                self.add_module(f"gdt_convs_{kind}_{index}", _conv1x1_head(gate_ch))

    def _with_patches(self, p: torch.Tensor, image: torch.Tensor, level: int) -> torch.Tensor:
        patches = getattr(self, f"ipt_blk{level}")(image_patches(image, p.shape[2:], self.patch_order))
        return torch.cat((p, patches), 1)

    def _gated(self, p: torch.Tensor, level: int) -> torch.Tensor:
        gate = getattr(self, f"gdt_convs_attn_{level}")(getattr(self, f"gdt_convs_{level}")(p))
        return p * torch.sigmoid(gate)

    def forward(self, image: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        """Decodes the encoder features.

        Args:
            image: The normalised input (N, 3, H, W).
            features: ``x1, x2, x3, x4`` at strides 4, 8, 16, 32; ``x4`` already squeezed.

        Returns:
            Logits (N, 1, H, W).
        """
        p = self._gated(self.decoder_block4(self._with_patches(features[3], image, 5)), 4)
        for level in (3, 2, 1):
            skip = features[level - 1]
            p = resize_to(p, skip.shape[2:]) + getattr(self, f"lateral_block{level + 1}")(skip)
            p = getattr(self, f"decoder_block{level}")(self._with_patches(p, image, level + 1))
            if level > 1:
                p = self._gated(p, level)
        p = resize_to(p, image.shape[2:])
        return self.conv_out1(self._with_patches(p, image, 1))


class BiRefNet(nn.Module):
    """BiRefNet as released (see the module docstring).

    Args:
        variant: Backbone, a key of ``VARIANTS`` (``swin_l`` or ``swin_t``).
        patch_order: Channel order of the decoder's image patches, which must be the one the
            weights were trained with (see :func:`image_patches`); it has no parameters of its
            own, so a checkpoint loads either way.

    Raises:
        ValueError: For an unknown variant or patch order.
    """

    def __init__(self, variant: str = "swin_l", patch_order: PatchOrder = "current") -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown BiRefNet variant {variant!r}; known: {', '.join(VARIANTS)}")
        if patch_order not in get_args(PatchOrder):
            raise ValueError(f"unknown BiRefNet patch order {patch_order!r}; known: {', '.join(get_args(PatchOrder))}")
        shape = VARIANTS[variant]
        self.variant = variant
        self.bb = SwinBackbone(shape)
        # Multi-scale input 'cat' doubles every backbone feature's channels.
        channels = [2 * shape.embed_dim * 2**i for i in (3, 2, 1, 0)]
        self.squeeze_module = nn.Sequential(BasicDecBlk(sum(channels), channels[0]))
        self.decoder = Decoder(channels, patch_order)

    @property
    def patch_order(self) -> PatchOrder:
        """The decoder's image-patch order."""
        return self.decoder.patch_order

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Runs the backbone at full and half size and builds the decoder's inputs.

        Args:
            x: Normalised images (N, 3, H, W).

        Returns:
            ``x1, x2, x3, x4`` at strides 4, 8, 16, 32 with doubled channels; ``x4`` carries
            the context of the other three and has been through the squeeze block.
        """
        h, w = x.shape[2:]
        half = F.interpolate(x, size=(h // 2, w // 2), mode="bilinear", align_corners=True)
        features = [torch.cat((full, resize_to(small, full.shape[2:])), 1) for full, small in zip(self.bb(x), self.bb(half))]
        deepest = features[3]
        context = [resize_to(f, deepest.shape[2:]) for f in features[:3]]
        features[3] = self.squeeze_module(torch.cat((*context, deepest), 1))
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Computes the final logits (the reference's last output in eval mode).

        Args:
            x: Normalised images (N, 3, H, W), H and W multiples of ``SIZE_MULTIPLE``.

        Returns:
            Logits (N, 1, H, W).

        Raises:
            ValueError: If H or W is not a multiple of ``SIZE_MULTIPLE``.
        """
        h, w = x.shape[2:]
        if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
            raise ValueError(f"BiRefNet needs height and width that are multiples of {SIZE_MULTIPLE}, got {h}x{w}")
        return self.decoder(x, self.encode(x))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Foreground probabilities.

        Args:
            x: Normalised images (N, 3, H, W), H and W multiples of ``SIZE_MULTIPLE``.

        Returns:
            Probabilities in [0, 1], shape (N, 1, H, W).
        """
        return torch.sigmoid(self.forward(x))


def build_birefnet(variant: str, patch_order: PatchOrder = "current") -> BiRefNet:
    """BiRefNet with random weights (the registry's builder).

    Args:
        variant: ``swin_l`` (BiRefNet general, RMBG-2.0) or ``swin_t`` (BiRefNet_lite).
        patch_order: The image-patch order the weights were trained with.

    Raises:
        ValueError: For an unknown variant or patch order.
    """
    return BiRefNet(variant, patch_order)


def map_published_keys(state: dict[str, Any]) -> dict[str, Any]:
    """Maps a published checkpoint's keys onto this module's (the registry's key map).

    The published state dicts use this module's names already; checkpoints saved from a
    ``DistributedDataParallel`` or ``torch.compile`` wrapper prefix every key with
    ``module.`` and/or ``_orig_mod.``, which are removed here (in any order).

    Args:
        state: The checkpoint's state dict.

    Returns:
        A new state dict with the same tensors under unprefixed keys.
    """
    mapped = {}
    for key, value in state.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in _PUBLISHED_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix) :], True
        mapped[key] = value
    return mapped
