"""DeepLabV3+ (Chen et al., "Encoder-Decoder with Atrous Separable Convolution for Semantic
Image Segmentation", ECCV 2018) with a ResNet-50 encoder, from segmentation-models-pytorch.

An output-stride-16 ResNet-50 (dilated last stage), atrous spatial pyramid pooling with
separable convolutions (rates 12, 24 and 36) and a decoder that fuses the stride-4
feature; smp upsamples the stride-4 logits to the input size. Chen et al. do not report
a parameter count; the registry records the 26.7 M measured here for 2 classes.
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
from torch import nn

from medbench.models.encoders import PaddedSmpModel, smp_encoder_source
from medbench.models.registry import register_model

__all__ = ["DeepLabV3Plus"]


class DeepLabV3Plus(PaddedSmpModel):
    """smp DeepLabV3Plus for any input size (zero-padded to a multiple of 16 and cropped back).

    Args:
        in_channels: input image channels.
        num_classes: output channels K.
        encoder_name: smp encoder (default `resnet50`).
        decoder_channels: width of the ASPP and decoder convolutions (default 256).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        encoder_name: str = "resnet50",
        decoder_channels: int = 256,
    ) -> None:
        super().__init__(
            smp.DeepLabV3Plus(
                encoder_name=encoder_name,
                encoder_weights=None,
                in_channels=in_channels,
                classes=num_classes,
                decoder_channels=decoder_channels,
            ),
            multiple=16,
        )


@register_model(
    family="peer",
    published_params_m=26.7,
    params_source="segmentation-models-pytorch 0.6 DeepLabV3Plus with resnet50 encoder (measured, 2 classes)",
    default_input_size=512,
    gradcam_layer="net.decoder.block2",
    pretrained=smp_encoder_source("resnet50", "ResNet-50 ImageNet-1k (smp-hub/resnet50.imagenet)", "net.encoder."),
)
def deeplabv3plus(in_channels: int, num_classes: int, **overrides) -> nn.Module:
    return DeepLabV3Plus(in_channels, num_classes, **overrides)
