"""UNet++ (Zhou et al., "UNet++: A Nested U-Net Architecture for Medical Image
Segmentation", DLMIA 2018) from segmentation-models-pytorch.

The decoder replaces U-Net's plain skip connections with nested, densely connected
convolution blocks that bridge the semantic gap between encoder and decoder features.
smp builds it on a ResNet-34 encoder here (26.1 M parameters for 2 classes), not on the
VGG-style encoder of the paper.
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
from torch import nn

from medbench.models.registry import register_model
from medbench.models.encoders import PaddedSmpModel, smp_encoder_source

__all__ = ["UNetPlusPlus"]


class UNetPlusPlus(PaddedSmpModel):
    """smp UnetPlusPlus for any input size (zero-padded to a multiple of 32 and cropped back).

    Args:
        in_channels: input image channels.
        num_classes: output channels K.
        encoder_name: smp encoder (default "resnet34").
        decoder_channels: widths of the five decoder levels (smp's default 256 to 16).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        encoder_name: str = "resnet34",
        decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16),
    ) -> None:
        super().__init__(
            smp.UnetPlusPlus(
                encoder_name=encoder_name,
                encoder_weights=None,
                in_channels=in_channels,
                classes=num_classes,
                decoder_channels=decoder_channels,
            ),
            multiple=32,
        )


@register_model(
    family="peer",
    published_params_m=26.1,
    params_source="segmentation-models-pytorch 0.6 UnetPlusPlus with a ResNet-34 encoder, "
    "2 classes (counted); architecture of Zhou et al., DLMIA 2018",
    default_input_size=256,
    gradcam_layer="net.decoder",
    pretrained=smp_encoder_source("resnet34", "ResNet-34 ImageNet-1k (smp-hub/resnet34.imagenet)", "net.encoder."),
)
def unetplusplus(in_channels: int, num_classes: int, **overrides) -> nn.Module:
    return UNetPlusPlus(in_channels, num_classes, **overrides)
