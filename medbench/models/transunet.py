"""TransUNet (Chen et al., "TransUNet: Transformers Make Strong Encoders for Medical Image
Segmentation", arXiv 2102.04306, 2021), R50-ViT-B/16 hybrid.

The encoder is timm's `vit_base_r50_s16_224`. A ResNet-50-v2 trunk (stem and three
stages, group normalization and weight-standardized convolutions) reduces the image to
1/16. A 1x1 convolution embeds each position as a token, and twelve ViT-B blocks (width
768) attend over all tokens. Like TransUNet, the model has no class token. The cascaded
upsampler decoder reshapes the tokens to a 1/16 feature map, applies a 3x3 convolution
to 512 channels, then four times upsamples by 2, concatenates the ResNet features of the
same resolution (1/8, 1/4, 1/2; none at full resolution) and applies two 3x3
convolutions. About 105 M parameters.

Inputs of any size are zero-padded to a multiple of 16 and the position embeddings are
resampled to the token grid (timm's `dynamic_img_size`), as TransUNet does when its input
size differs from the pretraining size.
"""

from __future__ import annotations

from collections.abc import Mapping

import timm
import torch
from torch import nn

from medbench.models.layers import ConvNormAct, pad_to_multiple
from medbench.models.registry import PretrainedSource, register_model

__all__ = ["TransUNet"]


class DecoderBlock(nn.Module):
    """Upsample by 2, concatenate the skip (if any), then two 3x3 convolutions."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.UpsamplingBilinear2d(scale_factor=2)
        self.convs = nn.Sequential(
            ConvNormAct(in_channels + skip_channels, out_channels), ConvNormAct(out_channels, out_channels)
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = self.up(x)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.convs(x)


class TransUNet(nn.Module):
    """TransUNet R50-ViT-B/16 for any input size.

    Args:
        in_channels: input image channels.
        num_classes: output channels K.
        img_size: size the position embeddings are laid out for (default 224).
        decoder_channels: output widths of the four decoder blocks (default 256-128-64-16).
        drop_path_rate: stochastic depth of the ViT blocks (default 0).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        img_size: int = 224,
        decoder_channels: tuple[int, int, int, int] = (256, 128, 64, 16),
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.encoder = timm.create_model(
            "vit_base_r50_s16_224",
            pretrained=False,
            in_chans=in_channels,
            img_size=img_size,
            num_classes=0,
            class_token=False,
            global_pool="avg",
            dynamic_img_size=True,
            drop_path_rate=drop_path_rate,
        )
        width = self.encoder.embed_dim
        self.conv_more = ConvNormAct(width, 512)
        skip_channels = (512, 256, 64, 0)
        in_widths = (512,) + tuple(decoder_channels[:-1])
        self.decoder = nn.ModuleList(
            DecoderBlock(cin, skip, cout) for cin, skip, cout in zip(in_widths, skip_channels, decoder_channels)
        )
        self.head = nn.Conv2d(decoder_channels[-1], num_classes, kernel_size=3, padding=1)

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return the (B, 768, H/16, W/16) token map and the ResNet skips at 1/8, 1/4 and 1/2."""
        backbone = self.encoder.patch_embed.backbone
        stem = backbone.stem.norm(backbone.stem.conv(x))  # 1/2, 64 channels
        features = backbone.stem.pool(stem)
        skips = [stem]
        for stage in backbone.stages:
            features = stage(features)
            skips.append(features)
        skips.pop()  # the 1/16 output is embedded as tokens, not used as a skip

        tokens = self.encoder.patch_embed.proj(features).permute(0, 2, 3, 1)  # (B, h, w, C)
        b, h, w, c = tokens.shape
        tokens = self.encoder._pos_embed(tokens)  # flattens and adds resampled embeddings
        tokens = self.encoder.norm_pre(tokens)
        tokens = self.encoder.norm(self.encoder.blocks(tokens))
        return tokens.transpose(1, 2).reshape(b, c, h, w), skips[::-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (h, w) = pad_to_multiple(x, 16)
        y, skips = self._encode(x)
        y = self.conv_more(y)
        for block, skip in zip(self.decoder, skips + [None]):
            y = block(y, skip)
        return self.head(y)[..., :h, :w]


def _vit_r50_to_transunet(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # The checkpoint has a class token and its position embedding first; TransUNet has neither.
    mapped = {}
    for key, value in state.items():
        if key.startswith(("head.", "cls_token")):
            continue
        if key == "pos_embed" and value.shape[1] % 2 == 1:  # 1 + 14 * 14 positions
            value = value[:, 1:]
        mapped[f"encoder.{key}"] = value
    return mapped


@register_model(
    family="peer",
    published_params_m=105.3,
    # NOTE: the count was not checked against the paper offline. It is the figure usually
    # quoted for R50-ViT-B/16 TransUNet at 224x224, and this model counts 105.28 M.
    params_source="Chen et al., TransUNet, arXiv 2102.04306 (2021), R50-ViT-B/16",
    default_input_size=224,
    gradcam_layer="decoder.3",
    # NOTE: the hub revision is not pinned: no network was available to look up the commit id.
    pretrained=PretrainedSource(
        description="R50-ViT-B/16 ImageNet-21k (timm vit_base_r50_s16_224.orig_in21k)",
        hub_id="timm/vit_base_r50_s16_224.orig_in21k",
        filename="model.safetensors",
        key_map=_vit_r50_to_transunet,
    ),
)
def transunet(in_channels: int, num_classes: int, **overrides) -> nn.Module:
    return TransUNet(in_channels, num_classes, **overrides)
