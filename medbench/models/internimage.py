"""InternImage-T (Wang et al., "InternImage: Exploring Large-Scale Vision Foundation Models
with Deformable Convolutions", CVPR 2023) with a UPerHead.

InternImage is a four-stage pyramid (channels 64, 128, 256, 512 for T, depths 4-4-18-4)
whose core operator is DCNv3: a 3x3 deformable convolution that splits the channels into
groups (4, 8, 16, 32 per stage), predicts each group's sampling offsets and
softmax-normalized modulation scalars from a depthwise-convolved copy of the input, and
shares the projection weights across groups. Each block is pre-norm: DCNv3 then an MLP
(ratio 4), both residual. A two-convolution stem reaches stride 4 and a strided 3x3
convolution starts each later stage. All LayerNorms act on channels-last tensors.

Module names follow the official release, so its ImageNet checkpoint loads by prefix.
The study counts 58 M parameters; with 2 classes this build has 58.4 M (InternImage
reports 59 M for 150 classes, auxiliary head included).
"""

from __future__ import annotations

import torch
from timm.layers import DropPath
from torch import nn

from medbench.models.encoders import prefixed_key_map
from medbench.models.ops.dcnv3 import dcnv3
from medbench.models.registry import PretrainedSource, register_model
from medbench.models.upernet import EncoderUPerNet

__all__ = ["DCNv3", "InternImage", "InternImageUPerNet"]


class ToChannelsLast(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


class ToChannelsFirst(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


def layer_norm(channels: int, channels_first_in: bool = False, channels_first_out: bool = False) -> nn.Sequential:
    """LayerNorm over channels, with permutes around it for channels-first tensors."""
    layers: list[nn.Module] = [ToChannelsLast()] if channels_first_in else []
    layers.append(nn.LayerNorm(channels, eps=1e-6))
    if channels_first_out:
        layers.append(ToChannelsFirst())
    return nn.Sequential(*layers)


class DCNv3(nn.Module):
    """DCNv3 layer on channels-last (N, H, W, C) tensors.

    Args:
        channels: input and output channels C.
        group: channel groups G; each predicts its own offsets and modulation.
        kernel_size: side k of the sampling grid (K = k*k points per group).
        offset_scale: factor on the kernel grid and the predicted offsets.
    """

    def __init__(self, channels: int, group: int, kernel_size: int = 3, offset_scale: float = 1.0) -> None:
        super().__init__()
        if channels % group:
            raise ValueError(f"DCNv3 channels {channels} must divide by group {group}.")
        self.group = group
        self.kernel_size = kernel_size
        self.offset_scale = offset_scale
        points = kernel_size * kernel_size
        self.dw_conv = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels),
            layer_norm(channels, channels_first_in=True),
            nn.GELU(),
        )
        self.offset = nn.Linear(channels, group * points * 2)
        self.mask = nn.Linear(channels, group * points)
        self.input_proj = nn.Linear(channels, channels)
        self.output_proj = nn.Linear(channels, channels)
        # Start as a plain (uniformly weighted) 3x3 aggregation: zero offsets, equal modulation.
        for layer in (self.offset, self.mask):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, h, w, _ = x.shape
        values = self.input_proj(x)
        context = self.dw_conv(x.permute(0, 3, 1, 2))  # (N, H, W, C)
        offset = self.offset(context)
        mask = self.mask(context).reshape(n, h, w, self.group, -1).softmax(-1).reshape(n, h, w, -1)
        out = dcnv3(
            values, offset, mask, kernel_size=self.kernel_size, stride=1, padding=self.kernel_size // 2,
            dilation=1, group=self.group, offset_scale=self.offset_scale,
        )
        return self.output_proj(out)


class Mlp(nn.Module):
    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class InternImageBlock(nn.Module):
    """Pre-norm residual block: DCNv3, then an MLP."""

    def __init__(self, channels: int, group: int, mlp_ratio: float, drop_path: float, offset_scale: float) -> None:
        super().__init__()
        self.norm1 = layer_norm(channels)
        self.dcn = DCNv3(channels, group, offset_scale=offset_scale)
        self.norm2 = layer_norm(channels)
        self.mlp = Mlp(channels, int(channels * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.dcn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Downsample(nn.Module):
    """Strided 3x3 convolution that halves the resolution and doubles the channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1, bias=False)
        self.norm = layer_norm(2 * channels, channels_first_in=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x.permute(0, 3, 1, 2)))


class Stem(nn.Module):
    """Two strided 3x3 convolutions to stride 4; returns channels-last tokens."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels // 2, 3, stride=2, padding=1)
        self.norm1 = layer_norm(channels // 2, channels_first_in=True, channels_first_out=True)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(channels // 2, channels, 3, stride=2, padding=1)
        self.norm2 = layer_norm(channels, channels_first_in=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))


class InternImageLevel(nn.Module):
    def __init__(
        self, channels: int, depth: int, group: int, mlp_ratio: float, drop_paths: list[float],
        offset_scale: float, downsample: bool,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            InternImageBlock(channels, group, mlp_ratio, drop_paths[i], offset_scale) for i in range(depth)
        )
        self.norm = layer_norm(channels)
        self.downsample = Downsample(channels) if downsample else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the normalized stage output (channels-last) and the next stage's input."""
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return x, (self.downsample(x) if self.downsample is not None else None)


class InternImage(nn.Module):
    """InternImage backbone returning four channels-first features at strides 4 to 32.

    Args:
        in_channels: input image channels.
        channels: channels of the first stage; each later stage doubles them (64 for T).
        depths: blocks per stage (4, 4, 18, 4 for T).
        groups: DCNv3 groups per stage (4, 8, 16, 32 for T).
        mlp_ratio: MLP hidden width over channels.
        drop_path_rate: maximum stochastic depth, reached linearly at the last block.
        offset_scale: DCNv3 offset scale.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int = 64,
        depths: tuple[int, ...] = (4, 4, 18, 4),
        groups: tuple[int, ...] = (4, 8, 16, 32),
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.2,
        offset_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.patch_embed = Stem(in_channels, channels)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.levels = nn.ModuleList()
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            self.levels.append(
                InternImageLevel(
                    channels * 2**i, depth, groups[i], mlp_ratio, rates[start:start + depth],
                    offset_scale, downsample=i < len(depths) - 1,
                )
            )
        self.out_channels = [channels * 2**i for i in range(len(depths))]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        features = []
        for level in self.levels:
            out, x = level(x)
            features.append(out.permute(0, 3, 1, 2))
        return features


class InternImageUPerNet(EncoderUPerNet):
    """InternImage with a UPerHead, for any input size.

    Args:
        in_channels: input image channels.
        num_classes: output channels K.
        head_channels: UPerHead width (512 in the official UperNet config).
        backbone_kwargs: `InternImage` arguments; the defaults give InternImage-T.
    """

    def __init__(self, in_channels: int, num_classes: int, head_channels: int = 512, **backbone_kwargs) -> None:
        super().__init__(InternImage(in_channels, **backbone_kwargs), num_classes, head_channels)


@register_model(
    family="GP-VM",
    published_params_m=58.0,
    params_source="Borst and Kounev, arXiv 2603.13044 (2026), model table; Wang et al. 2023 report 59 (ADE20K)",
    default_input_size=512,
    gradcam_layer="head.decoder.fusion_block",
    # NOTE: the hub revision is not pinned and the file's SHA-256 is unknown: neither could be
    # looked up offline. The URL is the one of the InternImage README.
    pretrained=PretrainedSource(
        description="InternImage-T ImageNet-1k (OpenGVLab/InternImage internimage_t_1k_224.pth)",
        hub_id="OpenGVLab/InternImage",
        filename="internimage_t_1k_224.pth",
        key_map=prefixed_key_map("encoder.", skip=("head.", "conv_head.")),
    ),
)
def internimage_t_upernet(in_channels: int, num_classes: int, **overrides) -> nn.Module:
    return InternImageUPerNet(in_channels, num_classes, **overrides)
