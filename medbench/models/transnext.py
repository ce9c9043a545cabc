"""TransNeXt-Tiny (Shi, "TransNeXt: Robust Foveal Visual Perception for Vision Transformers",
CVPR 2024) with a UPerHead.

A four-stage pyramid transformer (channels 72, 144, 288, 576, heads 3-6-12-24, depths
2-2-15-2). Stages 1-3 use aggregated attention (a 3x3 sliding window plus a map pooled by
8, 4 and 2, in one softmax, see `ops/aggregated_attention.py`); stage 4 uses full
attention with the same length-scaled cosine logits. The MLP is a convolutional GLU: a
linear layer to two halves, one passed through a depthwise 3x3 convolution and GELU and
multiplied by the other, then a linear projection (MLP ratios 8-8-4-4). Overlapping
strided convolutions embed the patches (7x7 stride 4, then 3x3 stride 2).

Head width: TransNeXt reports 59 M parameters for UperNet TransNeXt-T (150 classes,
auxiliary head included) and the study counts 58 M. The mmsegmentation UperNet width of
512 channels gives 57.7 M here with 2 classes, so the registry keeps 512.

Module names follow the official release, so its ImageNet checkpoint loads by prefix.
"""

from __future__ import annotations

import torch
from timm.layers import DropPath
from torch import nn

from medbench.models.encoders import prefixed_key_map
from medbench.models.ops.aggregated_attention import AggregatedAttention, LengthScaledAttention
from medbench.models.registry import PretrainedSource, register_model
from medbench.models.upernet import EncoderUPerNet

__all__ = ["TransNeXt", "TransNeXtUPerNet"]

PRETRAIN_IMAGE_SIZE = 224


class DepthwiseConv(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        b, n, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, height, width))
        return x.flatten(2).transpose(1, 2)


class ConvolutionalGLU(nn.Module):
    """Gated MLP; the hidden width is two thirds of `hidden`, so parameters match a plain MLP."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        hidden = int(2 * hidden / 3)
        self.fc1 = nn.Linear(channels, 2 * hidden)
        self.dwconv = DepthwiseConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        gate, value = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(self.act(self.dwconv(gate, height, width)) * value)


class TransNeXtBlock(nn.Module):
    def __init__(self, attention: nn.Module, dim: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = attention
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = ConvolutionalGLU(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), height, width))
        return x + self.drop_path(self.mlp(self.norm2(x), height, width))


class OverlapPatchEmbed(nn.Module):
    """Strided convolution with a kernel larger than its stride, then LayerNorm on the tokens."""

    def __init__(self, in_channels: int, dim: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size, stride=stride, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        height, width = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), height, width


class TransNeXt(nn.Module):
    """TransNeXt backbone returning four channels-first features at strides 4 to 32.

    Args:
        in_channels: input image channels.
        embed_dims: channels per stage (72, 144, 288, 576 for Tiny).
        num_heads: attention heads per stage.
        depths: blocks per stage (2, 2, 15, 2 for Tiny).
        mlp_ratios: MLP hidden width over channels per stage.
        sr_ratios: pooling factor of aggregated attention per stage; 1 selects full attention.
        window_size: side of the local attention window.
        drop_path_rate: maximum stochastic depth, reached linearly at the last block.
    """

    def __init__(
        self,
        in_channels: int,
        embed_dims: tuple[int, ...] = (72, 144, 288, 576),
        num_heads: tuple[int, ...] = (3, 6, 12, 24),
        depths: tuple[int, ...] = (2, 2, 15, 2),
        mlp_ratios: tuple[float, ...] = (8, 8, 4, 4),
        sr_ratios: tuple[int, ...] = (8, 4, 2, 1),
        window_size: int = 3,
        drop_path_rate: float = 0.3,
    ) -> None:
        super().__init__()
        self.num_stages = len(depths)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        for i, depth in enumerate(depths):
            dim = embed_dims[i]
            pretrain_size = PRETRAIN_IMAGE_SIZE // 2 ** (i + 2)
            if i == 0:
                embed = OverlapPatchEmbed(in_channels, dim, kernel_size=7, stride=4)
            else:
                embed = OverlapPatchEmbed(embed_dims[i - 1], dim, kernel_size=3, stride=2)

            def attention() -> nn.Module:
                if sr_ratios[i] == 1:
                    return LengthScaledAttention(dim, num_heads[i], pretrain_size=pretrain_size)
                return AggregatedAttention(
                    dim, num_heads[i], sr_ratios[i], window_size=window_size, pretrain_size=pretrain_size
                )

            start = sum(depths[:i])
            blocks = nn.ModuleList(
                TransNeXtBlock(attention(), dim, mlp_ratios[i], rates[start + j]) for j in range(depth)
            )
            # Stage names patch_embed{i}, block{i}, norm{i} (1-based) follow the released checkpoints.
            setattr(self, f"patch_embed{i + 1}", embed)
            setattr(self, f"block{i + 1}", blocks)
            setattr(self, f"norm{i + 1}", nn.LayerNorm(dim, eps=1e-6))
        self.out_channels = list(embed_dims)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i in range(1, self.num_stages + 1):
            tokens, height, width = getattr(self, f"patch_embed{i}")(x)
            for block in getattr(self, f"block{i}"):
                tokens = block(tokens, height, width)
            tokens = getattr(self, f"norm{i}")(tokens)
            x = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, height, width)
            features.append(x)
        return features


class TransNeXtUPerNet(EncoderUPerNet):
    """TransNeXt with a UPerHead, for any input size.

    Args:
        in_channels: input image channels.
        num_classes: output channels K.
        head_channels: UPerHead width (512 gives the published parameter count).
        backbone_kwargs: `TransNeXt` arguments; the defaults give TransNeXt-Tiny.
    """

    def __init__(self, in_channels: int, num_classes: int, head_channels: int = 512, **backbone_kwargs) -> None:
        super().__init__(TransNeXt(in_channels, **backbone_kwargs), num_classes, head_channels)


@register_model(
    family="GP-VM",
    published_params_m=58.0,
    params_source="Borst and Kounev, arXiv 2603.13044 (2026), model table; Shi 2024 reports 59 (ADE20K)",
    default_input_size=512,
    gradcam_layer="head.decoder.fusion_block",
    # NOTE: the hub revision is not pinned and the file's SHA-256 is unknown: neither could be
    # looked up offline. The file is the one linked from the TransNeXt README.
    pretrained=PretrainedSource(
        description="TransNeXt-Tiny ImageNet-1k (DaiShiResearch/transnext-tiny-224-1k)",
        hub_id="DaiShiResearch/transnext-tiny-224-1k",
        filename="transnext_tiny_224_1k.pth",
        key_map=prefixed_key_map("encoder.", skip=("head.",)),
    ),
)
def transnext_tiny_upernet(in_channels: int, num_classes: int, **overrides) -> nn.Module:
    return TransNeXtUPerNet(in_channels, num_classes, **overrides)
