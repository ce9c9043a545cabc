"""U-Net (Ronneberger, Fischer and Brox, MICCAI 2015), trained from scratch.

Four max-pool downsampling steps from 64 to 1024 channels, transposed-convolution
upsampling and concatenated skip connections; batch normalization after every
convolution, as in most modern reimplementations. About 31.0 M parameters for 2 classes.
"""

from __future__ import annotations

import torch
from torch import nn

from medbench.models.layers import ConvNormAct, pad_to_multiple
from medbench.models.registry import register_model

__all__ = ["UNet"]


class DoubleConv(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(ConvNormAct(in_channels, out_channels), ConvNormAct(out_channels, out_channels))


class Up(nn.Module):
    """Upsample by 2 with a transposed convolution, concatenate the skip, then two convolutions."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """Classic U-Net. Inputs of any size are zero-padded to a multiple of 16 and cropped back.

    Args:
        in_channels: input image channels.
        num_classes: output channels K.
        base_channels: channels of the first level; each level doubles them (default 64).
    """

    def __init__(self, in_channels: int, num_classes: int, base_channels: int = 64) -> None:
        super().__init__()
        widths = [base_channels * 2**i for i in range(5)]
        self.stem = DoubleConv(in_channels, widths[0])
        self.down = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), DoubleConv(widths[i], widths[i + 1])) for i in range(4)
        )
        self.up = nn.ModuleList(Up(widths[i + 1], widths[i]) for i in reversed(range(4)))
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)
        self.downsampling = 2 ** len(self.down)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (h, w) = pad_to_multiple(x, self.downsampling)
        skips = [self.stem(x)]
        for down in self.down:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up in self.up:
            y = up(y, skips.pop())
        return self.head(y)[..., :h, :w]


@register_model(
    family="SMA",
    published_params_m=31.0,
    params_source="Borst and Kounev, arXiv 2603.13044 (2026), model table",
    default_input_size=512,
    gradcam_layer="up.3",
)
def unet(in_channels: int, num_classes: int, **overrides) -> nn.Module:
    return UNet(in_channels, num_classes, **overrides)
