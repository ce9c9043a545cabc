"""Swin-Unet (Cao et al., "Swin-Unet: Unet-like Pure Transformer for Medical Image
Segmentation", ECCV Workshops 2022).

A Swin Transformer encoder (timm's implementation, depths 2-2-2-2), a symmetric decoder of
Swin blocks with patch-expanding upsampling, linear fusion of the skip connections and a
final 4x patch expansion. About 27 M parameters. Inputs of any size are zero-padded to a
multiple of 32 (patch size 4 times three merges); windows that do not fit a small feature
map are padded and masked inside timm's blocks.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from timm.models.swin_transformer import SwinTransformer, SwinTransformerBlock
from torch import nn

from medbench.models.layers import pad_to_multiple
from medbench.models.registry import PretrainedSource, register_model

__all__ = ["SwinUnet"]


class PatchExpand(nn.Module):
    """Double the spatial size of (B, H, W, C) tokens and divide channels by `scale**2 / expand`.

    A linear layer multiplies channels by `expand`, then each token's channels are
    rearranged into a `scale` x `scale` block of tokens (the inverse of patch merging).
    """

    def __init__(self, dim: int, scale: int = 2, expand: int = 2) -> None:
        super().__init__()
        self.scale = scale
        self.out_dim = dim * expand // scale**2
        self.expand = nn.Linear(dim, dim * expand, bias=False)
        self.norm = nn.LayerNorm(self.out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        s = self.scale
        x = self.expand(x).reshape(b, h, w, s, s, self.out_dim)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, h * s, w * s, self.out_dim)
        return self.norm(x)


class DecoderStage(nn.Module):
    """Fuse the skip connection, run Swin blocks, then expand (except in the last stage)."""

    def __init__(
        self, dim: int, depth: int, num_heads: int, window_size: int, resolution: int, expand: bool
    ) -> None:
        super().__init__()
        self.fuse = nn.Linear(2 * dim, dim)
        self.blocks = nn.Sequential(
            *(
                SwinTransformerBlock(
                    dim=dim,
                    input_resolution=(resolution, resolution),
                    num_heads=num_heads,
                    window_size=window_size,
                    shift_size=0 if i % 2 == 0 else window_size // 2,
                    dynamic_mask=True,
                )
                for i in range(depth)
            )
        )
        self.upsample = PatchExpand(dim) if expand else nn.Identity()

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.fuse(torch.cat([x, skip], dim=-1))
        return self.upsample(self.blocks(x))


class SwinUnet(nn.Module):
    """Swin-Unet for any input size.

    Args:
        in_channels: input image channels.
        num_classes: output channels K.
        img_size: design input size; it sets the window layout of the encoder (default 224).
        embed_dim: channels of the first stage (default 96, Swin-T).
        depths: Swin blocks per encoder stage; the decoder mirrors them.
        num_heads: attention heads per stage.
        window_size: attention window side in tokens (default 7).
        drop_path_rate: stochastic depth of the encoder (default 0.1).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        img_size: int = 224,
        embed_dim: int = 96,
        depths: tuple[int, ...] = (2, 2, 2, 2),
        num_heads: tuple[int, ...] = (3, 6, 12, 24),
        window_size: int = 7,
        drop_path_rate: float = 0.1,
    ) -> None:
        super().__init__()
        patch_size = 4
        self.encoder = SwinTransformer(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_channels,
            num_classes=0,
            embed_dim=embed_dim,
            depths=depths,
            num_heads=num_heads,
            window_size=window_size,
            strict_img_size=False,
            drop_path_rate=drop_path_rate,
        )
        num_stages = len(depths)
        dims = [embed_dim * 2**i for i in range(num_stages)]
        self.downsampling = patch_size * 2 ** (num_stages - 1)

        self.bottleneck_expand = PatchExpand(dims[-1])
        self.decoder = nn.ModuleList(
            DecoderStage(
                dim=dims[i],
                depth=depths[i],
                num_heads=num_heads[i],
                window_size=window_size,
                resolution=img_size // (patch_size * 2**i),
                expand=i > 0,
            )
            for i in reversed(range(num_stages - 1))
        )
        self.norm_up = nn.LayerNorm(dims[0])
        self.final_expand = PatchExpand(dims[0], scale=patch_size, expand=patch_size**2)
        self.head = nn.Conv2d(dims[0], num_classes, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (h, w) = pad_to_multiple(x, self.downsampling)

        # encoder: tokens are (B, H', W', C) throughout
        tokens = self.encoder.patch_embed(x)
        skips = []
        for stage in self.encoder.layers:
            tokens = stage(tokens)
            skips.append(tokens)
        y = self.bottleneck_expand(self.encoder.norm(skips.pop()))

        # decoder: fuse the skip of the same resolution, attend, expand
        for stage in self.decoder:
            y = stage(y, skips.pop())
        y = self.final_expand(self.norm_up(y))  # (B, H, W, C0)
        logits = self.head(y.permute(0, 3, 1, 2))
        return logits[..., :h, :w]


def _swin_imagenet_to_swinunet(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # timm's Swin-T checkpoint uses the same module names as `SwinUnet.encoder`; its third
    # stage has 6 blocks where Swin-Unet has 2, so blocks 2-5 end up as unused keys.
    return {f"encoder.{k}": v for k, v in state.items() if not k.startswith("head")}


@register_model(
    family="peer",
    published_params_m=27.17,
    params_source="Cao et al., Swin-Unet, ECCV Workshops 2022, Table 1 (Synapse, 224x224)",
    default_input_size=224,
    gradcam_layer="decoder.2",
    # NOTE: the hub revision is not pinned: no network was available to look up the
    # commit id. The resolved file is recorded by the hub cache on first download.
    pretrained=PretrainedSource(
        description="Swin-T ImageNet-1k (timm swin_tiny_patch4_window7_224.ms_in1k)",
        hub_id="timm/swin_tiny_patch4_window7_224.ms_in1k",
        filename="model.safetensors",
        key_map=_swin_imagenet_to_swinunet,
    ),
)
def swinunet(in_channels: int, num_classes: int, **overrides) -> nn.Module:
    return SwinUnet(in_channels, num_classes, **overrides)
