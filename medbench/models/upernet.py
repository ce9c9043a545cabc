"""UPerNet (Xiao et al., "Unified Perceptual Parsing for Scene Understanding", ECCV 2018).

`UPerHead` is the decoder shared by the InternImage and TransNeXt models. It runs a pyramid
pooling module (PPM, bins 1, 2, 3 and 6) on the stride-32 feature and a top-down FPN over
the stride-4 to stride-16 features, then fuses all levels at stride 4 with a 3x3 convolution. It wraps
smp's `UPerNetDecoder`, which also puts a LayerNorm on every input feature. The 512-channel
width is the one of the mmsegmentation UperNet configs behind the published counts.

This module also registers the classic peer `upernet_convnext_t`: ConvNeXt-T from timm
with that head. Liu et al. ("A ConvNet for the 2020s", CVPR 2022, Table 3) report 60 M
parameters for it with 150 classes and the auxiliary FCN head; here, with 2 classes and
no auxiliary head, it has 59.2 M.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder
from torch import nn

from medbench.models.encoders import TimmPyramid, timm_hub_source
from medbench.models.layers import pad_to_multiple, resize_to
from medbench.models.registry import register_model

__all__ = ["EncoderUPerNet", "UPerHead", "UPerNet"]


class UPerHead(nn.Module):
    """PPM + FPN decoder over four features at strides 4, 8, 16 and 32, with a 1x1 classifier.

    Args:
        in_channels: channels of the four input features, finest first.
        num_classes: output channels K.
        channels: width of the PPM, FPN and fusion convolutions (512 in mmsegmentation).
        dropout: dropout before the classifier (0.1 in mmsegmentation).

    The output is at stride 4 (the resolution of the finest input feature).
    """

    def __init__(
        self, in_channels: Sequence[int], num_classes: int, channels: int = 512, dropout: float = 0.1
    ) -> None:
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"UPerHead needs four input features, got channels {list(in_channels)}.")
        # smp's decoder skips the first two entries (strides 1 and 2), which these encoders lack.
        self.decoder = UPerNetDecoder(
            encoder_channels=[0, 0, *in_channels], encoder_depth=5, decoder_channels=channels
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        fused = self.decoder([None, None, *features])
        return self.classifier(self.dropout(fused))


class EncoderUPerNet(nn.Module):
    """A feature-pyramid encoder with a UPerHead, for any input size (zero-padded to a multiple
    of 32, cropped back).

    Args:
        encoder: module mapping (B, C, H, W) to four feature maps, with their widths in
            `encoder.out_channels`.
        num_classes: output channels K.
        head_channels: UPerHead width (512 in the mmsegmentation UperNet configs).
    """

    def __init__(self, encoder: nn.Module, num_classes: int, head_channels: int = 512) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = UPerHead(encoder.out_channels, num_classes, channels=head_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (h, w) = pad_to_multiple(x, 32)
        logits = self.head(self.encoder(x))
        return resize_to(logits, tuple(x.shape[-2:]))[..., :h, :w]


class UPerNet(EncoderUPerNet):
    """UPerNet on a timm backbone, for any input size.

    Args:
        in_channels: input image channels.
        num_classes: output channels K.
        backbone: timm architecture with four stages (default `convnext_tiny`).
        head_channels: UPerHead width (default 512).
        drop_path_rate: stochastic depth of the backbone (0.4 in the ConvNeXt-T UperNet config).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        backbone: str = "convnext_tiny",
        head_channels: int = 512,
        drop_path_rate: float = 0.4,
    ) -> None:
        super().__init__(TimmPyramid(backbone, in_channels, drop_path_rate=drop_path_rate), num_classes, head_channels)


@register_model(
    family="peer",
    published_params_m=60.0,
    params_source="Liu et al., A ConvNet for the 2020s, CVPR 2022, Table 3 (UperNet ConvNeXt-T, ADE20K 512x512)",
    default_input_size=512,
    gradcam_layer="head.decoder.fusion_block",
    pretrained=timm_hub_source(
        "timm/convnext_tiny.fb_in1k", "ConvNeXt-T ImageNet-1k (timm convnext_tiny.fb_in1k)", "encoder."
    ),
)
def upernet_convnext_t(in_channels: int, num_classes: int, **overrides) -> nn.Module:
    return UPerNet(in_channels, num_classes, **overrides)
