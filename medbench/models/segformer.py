"""SegFormer (Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation
with Transformers", NeurIPS 2021) from segmentation-models-pytorch.

The MiT encoder with the all-MLP decoder at its published width (768 channels for B3),
which gives the published 47.3 M parameters; smp's default decoder width of 256 would give
44.6 M. smp's Segformer upsamples its quarter-resolution logits to the input size itself.
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
from torch import nn

from medbench.models.encoders import PaddedSmpModel, smp_encoder_source
from medbench.models.registry import register_model

__all__ = ["SegFormer"]


class SegFormer(PaddedSmpModel):
    """smp Segformer for any input size (zero-padded to a multiple of 32 and cropped back).

    Args:
        in_channels: input image channels.
        num_classes: output channels K.
        encoder_name: smp MiT encoder, `mit_b0` to `mit_b5` (default `mit_b3`).
        decoder_channels: width of the all-MLP decoder (768 in the paper for B2-B5).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        encoder_name: str = "mit_b3",
        decoder_channels: int = 768,
    ) -> None:
        super().__init__(
            smp.Segformer(
                encoder_name=encoder_name,
                encoder_weights=None,
                in_channels=in_channels,
                classes=num_classes,
                decoder_segmentation_channels=decoder_channels,
            ),
            multiple=32,
        )


@register_model(
    family="GP-VM",
    published_params_m=47.0,
    params_source="Borst and Kounev, arXiv 2603.13044 (2026), model table; Xie et al. 2021 report 47.3",
    default_input_size=512,
    gradcam_layer="net.decoder.fuse_stage",
    pretrained=smp_encoder_source("mit_b3", "MiT-B3 ImageNet-1k (smp-hub/mit_b3.imagenet)", "net.encoder."),
)
def segformer_b3(in_channels: int, num_classes: int, **overrides) -> nn.Module:
    return SegFormer(in_channels, num_classes, **overrides)
