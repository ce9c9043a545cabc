"""HiFormer (Heidari et al., "HiFormer: Hierarchical Multi-scale Representations Using
Transformers for Medical Image Segmentation", WACV 2023), base variant.

A ResNet (timm, first three stages) and a Swin Transformer (timm, three stages of Swin-T:
depths 2-2-6, widths 96-192-384) run side by side. The CNN features at 1/4, 1/8 and 1/16
are projected by 1x1 convolutions to the Swin widths and added to the Swin tokens at the
start of each stage, so the Swin stages refine local CNN features with windowed attention.

The Double-Level Fusion (DLF) module then takes the finest (1/4, 96 channels) and the
coarsest (1/16, 384 channels) level as two token sequences, each with a class token from
average pooling and a learned position embedding. Each level runs its own transformer
blocks, then the class token of each level is projected to the other level's width and
attends to that level's patch tokens (cross-attention), which exchanges global context
between the two scales. The decoder upsamples the coarse level by 4 with two convolution
stages, concatenates it with the fine level and predicts at 1/4, upsampled to the input.

HiFormer works on a fixed 224x224 grid (the position embeddings fix the token counts), so
inputs of any size are resized to 224x224 and the logits resized back. The base variant
uses ResNet-50 and about 25.5 M parameters.
"""

from __future__ import annotations

from collections.abc import Mapping

import timm
import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import Block
from torch import nn

from medbench.models.layers import resize_to
from medbench.models.registry import PretrainedSource, register_model

__all__ = ["HiFormer"]


class CrossAttention(nn.Module):
    """Multi-head attention of one query token (the first) over all tokens of a sequence."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, c = tokens.shape
        heads = self.num_heads
        q = self.query(tokens[:, :1]).reshape(b, 1, heads, c // heads).transpose(1, 2)
        k, v = self.key_value(tokens).reshape(b, n, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, 1, C / heads)
        return self.proj(out.transpose(1, 2).reshape(b, 1, c))


class ClassTokenExchange(nn.Module):
    """Project a class token to another level's width, attend there, and project it back.

    `forward(cls, other)` returns the updated class token (B, 1, dim). The projected token
    takes the place of the first token of `other`, the other level's (B, 1 + N, other_dim).
    """

    def __init__(self, dim: int, other_dim: int, num_heads: int) -> None:
        super().__init__()
        self.to_other = nn.Sequential(nn.LayerNorm(dim), nn.GELU(), nn.Linear(dim, other_dim))
        self.norm = nn.LayerNorm(other_dim)
        self.attention = CrossAttention(other_dim, num_heads)
        self.back = nn.Sequential(nn.LayerNorm(other_dim), nn.GELU(), nn.Linear(other_dim, dim))

    def forward(self, cls: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        query = self.to_other(cls)
        tokens = torch.cat([query, other[:, 1:]], dim=1)
        query = query + self.attention(self.norm(tokens))
        return cls + self.back(query)


class DoubleLevelFusion(nn.Module):
    """Transformer blocks per level, then class-token cross-attention between the two levels."""

    def __init__(
        self,
        small_dim: int,
        large_dim: int,
        small_tokens: int,
        large_tokens: int,
        depths: tuple[int, int] = (1, 2),
        num_heads: tuple[int, int] = (6, 12),
        mlp_ratio: float = 2.0,
    ) -> None:
        super().__init__()
        self.cls_small = nn.Parameter(torch.zeros(1, 1, small_dim))
        self.cls_large = nn.Parameter(torch.zeros(1, 1, large_dim))
        self.pos_small = nn.Parameter(torch.zeros(1, 1 + small_tokens, small_dim))
        self.pos_large = nn.Parameter(torch.zeros(1, 1 + large_tokens, large_dim))
        for parameter in (self.pos_small, self.pos_large):
            trunc_normal_(parameter, std=0.02)
        self.blocks_small = nn.Sequential(
            *(Block(small_dim, num_heads[0], mlp_ratio, qkv_bias=True) for _ in range(depths[0]))
        )
        self.blocks_large = nn.Sequential(
            *(Block(large_dim, num_heads[1], mlp_ratio, qkv_bias=True) for _ in range(depths[1]))
        )
        self.small_to_large = ClassTokenExchange(small_dim, large_dim, num_heads[1])
        self.large_to_small = ClassTokenExchange(large_dim, small_dim, num_heads[0])
        self.norm_small = nn.LayerNorm(small_dim)
        self.norm_large = nn.LayerNorm(large_dim)

    def _with_class_token(self, tokens: torch.Tensor, cls: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        cls = cls + tokens.mean(dim=1, keepdim=True)
        return torch.cat([cls, tokens], dim=1) + pos

    def forward(self, small: torch.Tensor, large: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        small = self.blocks_small(self._with_class_token(small, self.cls_small, self.pos_small))
        large = self.blocks_large(self._with_class_token(large, self.cls_large, self.pos_large))
        small_cls = self.small_to_large(small[:, :1], large)
        large_cls = self.large_to_small(large[:, :1], small)
        small = torch.cat([small_cls, small[:, 1:]], dim=1)
        large = torch.cat([large_cls, large[:, 1:]], dim=1)
        return self.norm_small(small)[:, 1:], self.norm_large(large)[:, 1:]


class ConvUpsample(nn.Sequential):
    """3x3 convolutions with group normalization and ReLU, each followed by 2x upsampling."""

    def __init__(self, in_channels: int, widths: tuple[int, ...]) -> None:
        layers: list[nn.Module] = []
        for width in widths:
            layers += [
                nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                nn.GroupNorm(32, width),
                nn.ReLU(inplace=True),
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            ]
            in_channels = width
        super().__init__(*layers)


class HiFormer(nn.Module):
    """HiFormer for any input size (resized to `img_size` and back).

    Args:
        in_channels: input image channels.
        num_classes: output channels K.
        img_size: side of the internal square grid (default 224).
        cnn_backbone: timm ResNet whose first three stages form the CNN branch
            (default "resnet50", the base variant; "resnet34" gives HiFormer-S's CNN).
        swin_depths: Swin blocks of the three stages (default 2-2-6, Swin-T).
        dlf_depths: transformer blocks of the fine and the coarse level in the DLF module.
        decoder_width: channels of the decoder (default 128).
        drop_path_rate: stochastic depth of the Swin stages (default 0.1).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        img_size: int = 224,
        cnn_backbone: str = "resnet50",
        swin_depths: tuple[int, int, int] = (2, 2, 6),
        dlf_depths: tuple[int, int] = (1, 2),
        decoder_width: int = 128,
        drop_path_rate: float = 0.1,
    ) -> None:
        super().__init__()
        if img_size % 32:
            raise ValueError(f"img_size must be a multiple of 32, got {img_size}.")
        self.img_size = img_size
        dims = (96, 192, 384)
        self.cnn = timm.create_model(
            cnn_backbone, pretrained=False, in_chans=in_channels, features_only=True, out_indices=(1, 2, 3)
        )
        cnn_widths = self.cnn.feature_info.channels()
        self.cnn_proj = nn.ModuleList(nn.Conv2d(c, d, kernel_size=1) for c, d in zip(cnn_widths, dims))
        # Swin-T without its last stage; its patch embedding is unused because the CNN
        # features enter the Swin stages instead of image patches.
        self.encoder = SwinTransformer(
            img_size=img_size,
            in_chans=in_channels,
            num_classes=0,
            embed_dim=dims[0],
            depths=swin_depths,
            num_heads=(3, 6, 12),
            window_size=7,
            drop_path_rate=drop_path_rate,
        )
        self.encoder.patch_embed = nn.Identity()
        self.encoder.norm = nn.Identity()

        small_side, large_side = img_size // 4, img_size // 16
        self.fusion = DoubleLevelFusion(dims[0], dims[2], small_side**2, large_side**2, dlf_depths)
        self.decoder_large = ConvUpsample(dims[2], (decoder_width, decoder_width))
        self.decoder_small = nn.Sequential(
            nn.Conv2d(dims[0], decoder_width, 3, padding=1, bias=False),
            nn.GroupNorm(32, decoder_width),
            nn.ReLU(inplace=True),
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(2 * decoder_width, decoder_width, 3, padding=1, bias=False),
            nn.BatchNorm2d(decoder_width),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Conv2d(decoder_width, num_classes, kernel_size=1)

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the fine (B, H/4, W/4, 96) and coarse (B, H/16, W/16, 384) channels-last levels."""
        levels = []
        tokens = None
        for stage, proj, feature in zip(self.encoder.layers, self.cnn_proj, self.cnn(x)):
            cnn_tokens = proj(feature).permute(0, 2, 3, 1)
            tokens = cnn_tokens if tokens is None else stage.downsample(tokens) + cnn_tokens
            tokens = stage.blocks(tokens)
            levels.append(tokens)
        return levels[0], levels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        x = resize_to(x, (self.img_size, self.img_size))

        small, large = self._encode(x)
        b, hs, ws, cs = small.shape
        _, hl, wl, cl = large.shape
        small, large = self.fusion(small.reshape(b, hs * ws, cs), large.reshape(b, hl * wl, cl))
        small = small.transpose(1, 2).reshape(b, cs, hs, ws)
        large = large.transpose(1, 2).reshape(b, cl, hl, wl)

        y = torch.cat([self.decoder_small(small), self.decoder_large(large)], dim=1)
        logits = self.head(self.fuse(y))
        return resize_to(logits, tuple(size))


def _swin_imagenet_to_hiformer(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # HiFormer keeps the first three Swin-T stages; the patch embedding, the last stage,
    # the final norm and the classifier of the checkpoint have no counterpart.
    skipped = ("patch_embed.", "layers.3.", "norm.", "head.")
    return {f"encoder.{k}": v for k, v in state.items() if not k.startswith(skipped)}


@register_model(
    family="SMA",
    published_params_m=26.0,
    params_source="Borst and Kounev, arXiv 2603.13044 (2026), model table; Heidari et al. 2023 report 25.51",
    default_input_size=224,
    gradcam_layer="fuse",
    # NOTE: only the Swin part is pretrained from this file; the ResNet branch starts from
    # random weights. The hub revision is not pinned: no network was available to look up
    # the commit id.
    pretrained=PretrainedSource(
        description="Swin-T ImageNet-1k (timm swin_tiny_patch4_window7_224.ms_in1k)",
        hub_id="timm/swin_tiny_patch4_window7_224.ms_in1k",
        filename="model.safetensors",
        key_map=_swin_imagenet_to_hiformer,
    ),
)
def hiformer_b(in_channels: int, num_classes: int, **overrides) -> nn.Module:
    return HiFormer(in_channels, num_classes, **overrides)
