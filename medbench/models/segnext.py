"""SegNeXt-L (Guo et al., "SegNeXt: Rethinking Convolutional Attention Design for Semantic
Segmentation", NeurIPS 2022).

Encoder MSCAN-L: a four-stage convolutional pyramid (channels 64, 128, 320, 512, depths
3-5-27-3, MLP ratios 8-8-4-4) of BatchNorm blocks. Each block's attention is multi-scale
convolutional attention: a 5x5 depthwise convolution followed by three branches of
strip convolutions (1x7 + 7x1, 1x11 + 11x1, 1x21 + 21x1), summed with their input, mixed
by a 1x1 convolution and multiplied onto the block input as a gate. Both residual branches
carry a layer scale (initialized to 0.01).

Decoder, the light Hamburger head: the stride-8, 16 and 32 features are resized to stride
8, concatenated and squeezed to 1024 channels, then a Hamburger module reconstructs them
with a rank-64 non-negative matrix factorization (multiplicative updates, only the last
one differentiated) before a 1x1 alignment and the classifier. The factorization starts
from random bases at every call (as upstream does), so outputs vary slightly between
calls even in eval mode; it runs in float32, because the study trained SegNeXt without
mixed precision.

The study counts 49 M parameters; with 2 classes this build has 48.8 M.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from medbench.models.encoders import prefixed_key_map
from medbench.models.layers import pad_to_multiple, resize_to
from medbench.models.registry import PretrainedSource, register_model

__all__ = ["MSCAN", "LightHamHead", "SegNeXt"]


class StemConv(nn.Module):
    """Two strided 3x3 convolutions with BatchNorm to stride 4."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_channels, channels // 2, 3, stride=2, padding=1),
            nn.BatchNorm2d(channels // 2),
            nn.GELU(),
            nn.Conv2d(channels // 2, channels, 3, stride=2, padding=1),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class OverlapPatchEmbed(nn.Module):
    """Strided 3x3 convolution with BatchNorm that starts stages 2 to 4."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, channels, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


def _depthwise(channels: int, kernel: tuple[int, int]) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, kernel, padding=(kernel[0] // 2, kernel[1] // 2), groups=channels)


class MultiScaleConvAttention(nn.Module):
    """Depthwise 5x5, three strip-convolution branches (7, 11, 21), a 1x1 mix, used as a gate."""

    def __init__(self, channels: int, strip_sizes: tuple[int, ...] = (7, 11, 21)) -> None:
        super().__init__()
        self.conv0 = _depthwise(channels, (5, 5))
        # Names conv{i}_1 (1 x k) and conv{i}_2 (k x 1) follow the released checkpoints.
        for i, size in enumerate(strip_sizes):
            setattr(self, f"conv{i}_1", _depthwise(channels, (1, size)))
            setattr(self, f"conv{i}_2", _depthwise(channels, (size, 1)))
        self.num_branches = len(strip_sizes)
        self.conv3 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.conv0(x)
        attention = base
        for i in range(self.num_branches):
            attention = attention + getattr(self, f"conv{i}_2")(getattr(self, f"conv{i}_1")(base))
        return self.conv3(attention) * x


class SpatialAttention(nn.Module):
    """1x1 projection, GELU, multi-scale convolutional attention, 1x1 projection, residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj_1 = nn.Conv2d(channels, channels, 1)
        self.activation = nn.GELU()
        self.spatial_gating_unit = MultiScaleConvAttention(channels)
        self.proj_2 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj_2(self.spatial_gating_unit(self.activation(self.proj_1(x))))


class ConvMlp(nn.Module):
    """1x1 expansion, depthwise 3x3, GELU, 1x1 projection."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.dwconv = nn.Module()
        self.dwconv.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv.dwconv(self.fc1(x))))


class MSCANBlock(nn.Module):
    def __init__(self, channels: int, mlp_ratio: float, drop_path: float, layer_scale: float = 1e-2) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(channels)
        self.attn = SpatialAttention(channels)
        self.norm2 = nn.BatchNorm2d(channels)
        self.mlp = ConvMlp(channels, int(channels * mlp_ratio))
        self.layer_scale_1 = nn.Parameter(torch.full((channels,), layer_scale))
        self.layer_scale_2 = nn.Parameter(torch.full((channels,), layer_scale))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.layer_scale_1[:, None, None] * self.attn(self.norm1(x)))
        return x + self.drop_path(self.layer_scale_2[:, None, None] * self.mlp(self.norm2(x)))


class MSCAN(nn.Module):
    """MSCAN encoder returning four features at strides 4 to 32 (channels-first).

    Args:
        in_channels: input image channels.
        embed_dims: channels per stage (64, 128, 320, 512 for L).
        depths: blocks per stage (3, 5, 27, 3 for L).
        mlp_ratios: MLP hidden width over channels per stage.
        drop_path_rate: maximum stochastic depth, reached linearly at the last block (0.3 for L).
    """

    def __init__(
        self,
        in_channels: int,
        embed_dims: tuple[int, ...] = (64, 128, 320, 512),
        depths: tuple[int, ...] = (3, 5, 27, 3),
        mlp_ratios: tuple[float, ...] = (8, 8, 4, 4),
        drop_path_rate: float = 0.3,
    ) -> None:
        super().__init__()
        self.num_stages = len(depths)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        for i, depth in enumerate(depths):
            if i == 0:
                embed: nn.Module = StemConv(in_channels, embed_dims[0])
            else:
                embed = OverlapPatchEmbed(embed_dims[i - 1], embed_dims[i])
            start = sum(depths[:i])
            blocks = nn.ModuleList(
                MSCANBlock(embed_dims[i], mlp_ratios[i], rates[start + j]) for j in range(depth)
            )
            # Stage names patch_embed{i}, block{i}, norm{i} (1-based) follow the released checkpoints.
            setattr(self, f"patch_embed{i + 1}", embed)
            setattr(self, f"block{i + 1}", blocks)
            setattr(self, f"norm{i + 1}", nn.LayerNorm(embed_dims[i]))
        self.out_channels = list(embed_dims)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"patch_embed{i}")(x)
            for block in getattr(self, f"block{i}"):
                x = block(x)
            x = getattr(self, f"norm{i}")(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()
            features.append(x)
        return features


def nmf(x: torch.Tensor, rank: int, steps: int, eps: float = 1e-6) -> torch.Tensor:
    """Return the rank-`rank` NMF reconstruction of non-negative `x` (B, D, N).

    Bases (B, D, R) start random and L2-normalized, coefficients (B, N, R) start as a
    softmax of x^T bases. `steps` multiplicative updates run without gradient; one final
    coefficient update is differentiated, so gradients reach `x` through one step.
    """
    batch, dim, _ = x.shape
    bases = F.normalize(torch.rand(batch, dim, rank, device=x.device, dtype=x.dtype), dim=1)
    with torch.no_grad():
        coef = torch.softmax(x.transpose(1, 2) @ bases, dim=-1)
        for _ in range(steps):
            coef = coef * (x.transpose(1, 2) @ bases) / (coef @ (bases.transpose(1, 2) @ bases) + eps)
            bases = bases * (x @ coef) / (bases @ (coef.transpose(1, 2) @ coef) + eps)
    coef = coef * (x.transpose(1, 2) @ bases) / (coef @ (bases.transpose(1, 2) @ bases) + eps)
    return bases @ coef.transpose(1, 2)


class Hamburger(nn.Module):
    """1x1 conv, ReLU, NMF reconstruction, 1x1 conv with GroupNorm, residual with ReLU."""

    def __init__(self, channels: int, rank: int = 64, train_steps: int = 6, eval_steps: int = 7) -> None:
        super().__init__()
        self.ham_in = nn.Conv2d(channels, channels, 1)
        self.ham_out = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), nn.GroupNorm(32, channels))
        self.rank = rank
        self.train_steps = train_steps
        self.eval_steps = eval_steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        enjoy = F.relu(self.ham_in(x))
        steps = self.train_steps if self.training else self.eval_steps
        with torch.autocast(device_type=x.device.type, enabled=False):
            enjoy = nmf(enjoy.float().reshape(b, c, h * w), self.rank, steps).reshape(b, c, h, w)
        enjoy = self.ham_out(enjoy.to(x.dtype))
        return F.relu(x + enjoy)


def _conv_gn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.GroupNorm(32, out_channels), nn.ReLU(inplace=True)
    )


class LightHamHead(nn.Module):
    """Light Hamburger decoder over the stride-8, 16 and 32 features; logits at stride 8.

    Args:
        in_channels: channels of the three input features.
        num_classes: output channels K.
        ham_channels: width of the squeeze and Hamburger (1024 for SegNeXt-L).
        channels: width after alignment (1024 for SegNeXt-L).
        rank: rank of the matrix factorization.
        dropout: dropout before the classifier.
    """

    def __init__(
        self, in_channels: list[int], num_classes: int, ham_channels: int = 1024, channels: int = 1024,
        rank: int = 64, dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.squeeze = _conv_gn_relu(sum(in_channels), ham_channels)
        self.hamburger = Hamburger(ham_channels, rank=rank)
        self.align = _conv_gn_relu(ham_channels, channels)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = tuple(features[0].shape[-2:])
        x = self.squeeze(torch.cat([resize_to(f, size) for f in features], dim=1))
        x = self.align(self.hamburger(x))
        return self.classifier(self.dropout(x))


class SegNeXt(nn.Module):
    """MSCAN encoder with the light Hamburger head, for any input size (padded to a multiple of 32).

    Args:
        in_channels: input image channels.
        num_classes: output channels K.
        ham_channels: Hamburger width (1024 for L).
        head_channels: decoder width after alignment (1024 for L).
        encoder_kwargs: `MSCAN` arguments; the defaults give MSCAN-L.
    """

    def __init__(
        self, in_channels: int, num_classes: int, ham_channels: int = 1024, head_channels: int = 1024,
        **encoder_kwargs,
    ) -> None:
        super().__init__()
        self.encoder = MSCAN(in_channels, **encoder_kwargs)
        self.head = LightHamHead(self.encoder.out_channels[1:], num_classes, ham_channels, head_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (h, w) = pad_to_multiple(x, 32)
        logits = self.head(self.encoder(x)[1:])
        return resize_to(logits, tuple(x.shape[-2:]))[..., :h, :w]


@register_model(
    family="GP-VM",
    published_params_m=49.0,
    params_source="Borst and Kounev, arXiv 2603.13044 (2026), model table; Guo et al. 2022 report 48.9 (ADE20K)",
    default_input_size=512,
    gradcam_layer="head.align",
    # NOTE: the 8 hex digits in the file name are the start of its SHA-256 (OpenMMLab's
    # naming). The full checksum could not be looked up offline, so it is not verified.
    pretrained=PretrainedSource(
        description="MSCAN-L ImageNet-1k (mmsegmentation mscan_l_20230227-cef260d4.pth)",
        url="https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/segnext/mscan_l_20230227-cef260d4.pth",
        key_map=prefixed_key_map("encoder.", skip=("head.",)),
    ),
    allow_amp=False,
)
def segnext_l(in_channels: int, num_classes: int, **overrides) -> nn.Module:
    return SegNeXt(in_channels, num_classes, **overrides)
