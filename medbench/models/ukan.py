"""U-KAN (Li et al., "U-KAN Makes Strong Backbone for Medical Image Segmentation and
Generation", AAAI 2025, arXiv 2406.02918), large variant, trained from scratch.

Three convolutional encoder stages (two 3x3 convolutions with batch normalization and ReLU,
then 2x2 max pooling) reduce the image to 1/8 at `embed_dims[0]` channels. Two tokenized KAN
stages follow, each an overlapping 3x3 stride-2 patch embedding and a KAN block. The
block's token mixer is three KAN layers, each followed by a 3x3 depthwise convolution
with batch normalization and ReLU, and a residual connection spans the block. The decoder mirrors
this with KAN blocks at the two deepest levels and convolution stages above, adds (not
concatenates) the skip connections and upsamples bilinearly. With embed_dims
(256, 320, 512) the model has about 25 M parameters. KAN layers are `KANLinear`: cubic
B-splines on a 5-interval grid plus a SiLU base branch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from medbench.models.layers import ConvNormAct, pad_to_multiple
from medbench.models.ops.kan import KANLinear
from medbench.models.registry import register_model

__all__ = ["UKAN"]


class DepthwiseConvBNReLU(nn.Module):
    """3x3 depthwise convolution, batch normalization and ReLU on (B, N, C) tokens of an h x w grid."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm = nn.BatchNorm2d(dim)

    def forward(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = tokens.shape
        x = tokens.transpose(1, 2).reshape(b, c, h, w)
        x = F.relu(self.norm(self.conv(x)))
        return x.flatten(2).transpose(1, 2)


class TokenKANMixer(nn.Module):
    """Three KAN layers, each followed by a depthwise convolution that mixes neighbouring tokens."""

    def __init__(self, dim: int, num_layers: int = 3, grid_size: int = 5, spline_order: int = 3) -> None:
        super().__init__()
        self.kan_layers = nn.ModuleList(
            KANLinear(dim, dim, grid_size=grid_size, spline_order=spline_order) for _ in range(num_layers)
        )
        self.depthwise = nn.ModuleList(DepthwiseConvBNReLU(dim) for _ in range(num_layers))

    def forward(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        for kan, depthwise in zip(self.kan_layers, self.depthwise):
            tokens = depthwise(kan(tokens), h, w)
        return tokens


class KANBlock(nn.Module):
    """Pre-norm residual block around `TokenKANMixer`, on (B, C, h, w) feature maps."""

    def __init__(self, dim: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mixer = TokenKANMixer(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.out_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        tokens = tokens + self.drop_path(self.mixer(self.norm(tokens), h, w))
        return self.out_norm(tokens).transpose(1, 2).reshape(b, c, h, w)


class TokenizedKANStage(nn.Module):
    """Overlapping 3x3 stride-2 patch embedding followed by a KAN block."""

    def __init__(self, in_channels: int, dim: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Conv2d(in_channels, dim, 3, stride=2, padding=1)
        self.embed_norm = nn.BatchNorm2d(dim)
        self.block = KANBlock(dim, drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.embed_norm(self.embed(x)))


class ConvDecoderStage(nn.Module):
    """Two 3x3 convolutions (the second changes the width), then 2x bilinear upsampling."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(ConvNormAct(in_channels, in_channels), ConvNormAct(in_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.convs(x), scale_factor=2, mode="bilinear", align_corners=False)


class UKAN(nn.Module):
    """U-KAN for any input size (zero-padded to a multiple of 32 and cropped back).

    Args:
        in_channels: input image channels.
        num_classes: output channels K.
        embed_dims: widths of the last convolutional stage and the two tokenized KAN
            stages. The first two convolutional stages have embed_dims[0] / 8 and / 4
            channels. (256, 320, 512) is the large variant.
        drop_path_rate: stochastic depth of the KAN blocks (default 0.1).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        embed_dims: tuple[int, int, int] = (256, 320, 512),
        drop_path_rate: float = 0.1,
    ) -> None:
        super().__init__()
        c0, c1, c2 = embed_dims
        conv_widths = [c0 // 8, c0 // 4, c0]
        self.conv_stages = nn.ModuleList()
        previous = in_channels
        for width in conv_widths:
            self.conv_stages.append(nn.Sequential(ConvNormAct(previous, width), ConvNormAct(width, width)))
            previous = width
        self.kan_stages = nn.ModuleList(
            [TokenizedKANStage(c0, c1, drop_path_rate / 2), TokenizedKANStage(c1, c2, drop_path_rate)]
        )

        # Decoder, deepest first: each stage ends at the resolution and width of the skip it is added to.
        self.decoders = nn.ModuleList(
            [
                ConvDecoderStage(c2, c1),
                ConvDecoderStage(c1, c0),
                ConvDecoderStage(c0, conv_widths[1]),
                ConvDecoderStage(conv_widths[1], conv_widths[0]),
                ConvDecoderStage(conv_widths[0], conv_widths[0]),
            ]
        )
        self.decoder_kan_blocks = nn.ModuleList([KANBlock(c1, drop_path_rate / 2), KANBlock(c0)])
        self.head = nn.Conv2d(conv_widths[0], num_classes, kernel_size=1)
        self.downsampling = 2 ** (len(self.conv_stages) + len(self.kan_stages))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (h, w) = pad_to_multiple(x, self.downsampling)

        skips = []  # at 1/2, 1/4, 1/8, 1/16 of the input
        for stage in self.conv_stages:
            x = F.relu(F.max_pool2d(stage(x), 2))
            skips.append(x)
        for stage in self.kan_stages:
            x = stage(x)
            skips.append(x)
        skips.pop()  # the 1/32 bottleneck is the decoder's input, not a skip

        for i, decoder in enumerate(self.decoders):
            x = decoder(x)
            if skips:
                x = x + skips.pop()
            if i < len(self.decoder_kan_blocks):
                x = self.decoder_kan_blocks[i](x)
        return self.head(x)[..., :h, :w]


@register_model(
    family="SMA",
    published_params_m=25.0,
    params_source="Borst and Kounev, arXiv 2603.13044 (2026), model table (U-KAN-L)",
    default_input_size=256,
    gradcam_layer="decoders.4",
)
def ukan_l(in_channels: int, num_classes: int, **overrides) -> nn.Module:
    return UKAN(in_channels, num_classes, **overrides)
