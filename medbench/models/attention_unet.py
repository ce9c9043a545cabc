"""Attention U-Net (Oktay et al., "Attention U-Net: Learning Where to Look for the Pancreas",
MIDL 2018, arXiv 1804.03999) from MONAI, trained from scratch.

A U-Net whose skip connections pass through additive attention gates: the coarser decoder
features and the skip features are projected, summed, and turned into a per-pixel
coefficient in [0, 1] that scales the skip features before concatenation. MONAI's
`AttentionUnet` with widths 64 to 1024 (four stride-2 levels, like the U-Net of this
registry) has 31.7 M parameters for 2 classes.
"""

from __future__ import annotations

import torch
from torch import nn

from medbench.models.layers import pad_to_multiple
from medbench.models.registry import register_model

__all__ = ["AttentionUNet"]


class AttentionUNet(nn.Module):
    """MONAI Attention U-Net for any input size (zero-padded to a multiple of 16 and cropped back).

    Args:
        in_channels: input image channels.
        num_classes: output channels K.
        channels: widths of the five levels (default 64 to 1024).
        dropout: dropout probability inside the convolution blocks (default 0).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: tuple[int, ...] = (64, 128, 256, 512, 1024),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        # MONAI is imported here, not at module level, because importing it takes about 4 s
        # on a 2-core CPU. Processes that only list or build other models skip that cost.
        from monai.networks.nets import AttentionUnet as MonaiAttentionUnet

        self.net = MonaiAttentionUnet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=num_classes,
            channels=channels,
            strides=(2,) * (len(channels) - 1),
            dropout=dropout,
        )
        self.downsampling = 2 ** (len(channels) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (h, w) = pad_to_multiple(x, self.downsampling)
        return self.net(x)[..., :h, :w]


@register_model(
    family="peer",
    published_params_m=31.7,
    # NOTE: no published count for a 2D Attention U-Net of this width was available
    # offline; the number is this configuration's own count.
    params_source="MONAI 1.6 AttentionUnet, widths 64-1024, 2 classes (counted); "
    "architecture of Oktay et al., MIDL 2018",
    default_input_size=256,
    gradcam_layer="net.model.1",
)
def attention_unet(in_channels: int, num_classes: int, **overrides) -> nn.Module:
    return AttentionUNet(in_channels, num_classes, **overrides)
