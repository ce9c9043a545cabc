"""Swin-UMamba (Liu et al., "Swin-UMamba: Mamba-based UNet with ImageNet-based
Pretraining", MICCAI 2024, arXiv 2402.03302).

The encoder is VMamba-Tiny (Liu et al., "VMamba: Visual State Space Model", arXiv
2401.10166; widths 96-768, depths 2-2-9-2): each block applies layer normalization and a
2D selective-scan module (SS2D) with a residual connection. SS2D projects the tokens and
mixes neighbours with a 3x3 depthwise convolution. It then runs a selective scan along
four paths through the feature map (row by row, column by column, and both reversed),
sums the four outputs and gates them with a SiLU branch. Patch merging halves the resolution
between stages.

Swin-UMamba puts a 7x7 stride-2 convolution stem (48 channels) in front of VMamba, whose
patch embedding then only halves the resolution once more, so the encoder yields features
at 1/2 to 1/32. A residual convolution block (MONAI's `UnetrBasicBlock`) refines the raw
input and each encoder output into a skip connection, and a U-Net decoder of MONAI
`UnetrUpBlock`s (transposed convolution, concatenation, residual block) returns to full
resolution. About 60 M parameters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from medbench.models.layers import pad_to_multiple
from medbench.models.ops.selective_scan import selective_scan
from medbench.models.registry import PretrainedSource, register_model

__all__ = ["SS2D", "SwinUMamba", "VSSEncoder"]

NUM_SCAN_PATHS = 4


class SS2D(nn.Module):
    """2D selective scan on channels-last (B, H, W, C) feature maps.

    Args:
        dim: channels of the input and output.
        d_state: state size N of each scanned channel.
        expand: width of the scanned features relative to `dim`.
        dt_min, dt_max: range of the initial step size (softplus of the step bias).
    """

    def __init__(
        self, dim: int, d_state: int = 16, expand: int = 2, dt_min: float = 1e-3, dt_max: float = 0.1
    ) -> None:
        super().__init__()
        inner = expand * dim
        self.d_state = d_state
        self.dt_rank = math.ceil(dim / 16)
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        self.conv2d = nn.Conv2d(inner, inner, kernel_size=3, padding=1, groups=inner)
        self.x_proj_weight = nn.Parameter(
            torch.empty(NUM_SCAN_PATHS, self.dt_rank + 2 * d_state, inner).uniform_(-inner**-0.5, inner**-0.5)
        )
        self.dt_projs_weight = nn.Parameter(
            torch.empty(NUM_SCAN_PATHS, inner, self.dt_rank).uniform_(-self.dt_rank**-0.5, self.dt_rank**-0.5)
        )
        # Initial steps are log-uniform in [dt_min, dt_max], so the bias is their softplus inverse.
        dt = torch.exp(
            torch.rand(NUM_SCAN_PATHS, inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        )
        self.dt_projs_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        # A = -exp(A_logs) = -(1, 2, ..., N) per channel, the S4D-real initialization.
        a_init = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(NUM_SCAN_PATHS * inner, 1)
        self.A_logs = nn.Parameter(torch.log(a_init))
        self.Ds = nn.Parameter(torch.ones(NUM_SCAN_PATHS * inner))
        self.out_norm = nn.LayerNorm(inner)
        self.out_proj = nn.Linear(inner, dim, bias=False)

    def _scan(self, x: torch.Tensor) -> torch.Tensor:
        """Scan (B, C, H, W) along the four paths and return the summed (B, C, H, W) output."""
        b, c, h, w = x.shape
        length = h * w
        rows = x.flatten(2)
        columns = x.transpose(2, 3).flatten(2)
        paths = torch.stack([rows, columns, rows.flip(-1), columns.flip(-1)], dim=1)  # (B, 4, C, L)

        projected = torch.einsum("bkcl,krc->bkrl", paths, self.x_proj_weight)
        dt, B, C = projected.split([self.dt_rank, self.d_state, self.d_state], dim=2)
        dt = torch.einsum("bkrl,kcr->bkcl", dt, self.dt_projs_weight)
        y = selective_scan(
            paths.reshape(b, -1, length),
            dt.reshape(b, -1, length),
            -torch.exp(self.A_logs.float()),
            B.contiguous(),
            C.contiguous(),
            D=self.Ds.float(),
            delta_bias=self.dt_projs_bias.reshape(-1).float(),
            delta_softplus=True,
        ).reshape(b, NUM_SCAN_PATHS, c, length)

        # Undo each path's ordering so that all four outputs are row-major again.
        y_rows = y[:, 0] + y[:, 2].flip(-1)
        y_columns = y[:, 1] + y[:, 3].flip(-1)
        y_columns = y_columns.reshape(b, c, w, h).transpose(2, 3).reshape(b, c, length)
        return (y_rows + y_columns).reshape(b, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.in_proj(x).chunk(2, dim=-1)
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2)))
        y = self._scan(x).permute(0, 2, 3, 1)
        y = self.out_norm(y) * F.silu(gate)
        return self.out_proj(y)


class VSSBlock(nn.Module):
    """Pre-norm residual SS2D block on (B, H, W, C)."""

    def __init__(self, dim: int, d_state: int, drop_path: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.self_attention = SS2D(dim, d_state)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.self_attention(self.ln_1(x)))


class PatchMerging2D(nn.Module):
    """Halve H and W of (B, H, W, C) by stacking each 2x2 neighbourhood into 4C channels, then project to 2C."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class VSSStage(nn.Module):
    """VSS blocks at one resolution, then optional patch merging; returns both outputs."""

    def __init__(self, dim: int, depth: int, d_state: int, drop_paths: list[float], downsample: bool) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(VSSBlock(dim, d_state, p) for p in drop_paths[:depth]))
        self.downsample = PatchMerging2D(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.blocks(x)
        return x, (self.downsample(x) if self.downsample is not None else None)


class PatchEmbed2D(nn.Module):
    def __init__(self, in_channels: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class VSSEncoder(nn.Module):
    """VMamba encoder. Module names follow the VMamba checkpoints so that their keys load directly.

    Returns the channels-first output of every stage, before its patch merging.
    """

    def __init__(
        self,
        in_channels: int,
        patch_size: int = 2,
        dims: tuple[int, ...] = (96, 192, 384, 768),
        depths: tuple[int, ...] = (2, 2, 9, 2),
        d_state: int = 16,
        drop_path_rate: float = 0.2,
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed2D(in_channels, dims[0], patch_size)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.layers = nn.ModuleList(
            VSSStage(dims[i], depths[i], d_state, rates[starts[i] :], downsample=i < len(depths) - 1)
            for i in range(len(depths))
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        features = []
        for layer in self.layers:
            out, x = layer(x)
            features.append(out.permute(0, 3, 1, 2))
        return features


class SwinUMamba(nn.Module):
    """Swin-UMamba for any input size (zero-padded to a multiple of 32 and cropped back).

    Args:
        in_channels: input image channels.
        num_classes: output channels K.
        feature_sizes: widths of the stem and of the four encoder stages (48 and
            VMamba-Tiny's 96, 192, 384, 768). The skip connections at 1/1 to 1/16 of the
            input have the same widths.
        depths: VSS blocks per encoder stage (default 2-2-9-2, VMamba-Tiny).
        d_state: state size of the selective scans (default 16).
        drop_path_rate: stochastic depth of the encoder (default 0.2).
        norm_name: normalization of the convolution blocks, a MONAI name (default "instance").
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        feature_sizes: tuple[int, ...] = (48, 96, 192, 384, 768),
        depths: tuple[int, ...] = (2, 2, 9, 2),
        d_state: int = 16,
        drop_path_rate: float = 0.2,
        norm_name: str = "instance",
    ) -> None:
        super().__init__()
        # Imported here because importing MONAI takes seconds (see attention_unet.py).
        from monai.networks.blocks import UnetrBasicBlock, UnetrUpBlock

        stem_width, *dims = feature_sizes  # dims: encoder widths at 1/4 to 1/32
        dims = tuple(dims)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_width, kernel_size=7, stride=2, padding=3),
            nn.InstanceNorm2d(stem_width, affine=True),
        )
        self.encoder = VSSEncoder(stem_width, 2, dims, depths, d_state, drop_path_rate)

        def basic(cin: int, cout: int) -> nn.Module:
            return UnetrBasicBlock(2, cin, cout, kernel_size=3, stride=1, norm_name=norm_name, res_block=True)

        # Skip blocks on the input, the stem output and the first three encoder stages.
        skip_inputs = (in_channels, stem_width) + dims[:-1]
        self.skips = nn.ModuleList(basic(cin, cout) for cin, cout in zip(skip_inputs, feature_sizes))
        up_inputs = (dims[-1],) + tuple(reversed(feature_sizes[1:]))
        self.decoders = nn.ModuleList(
            UnetrUpBlock(2, cin, cout, kernel_size=3, upsample_kernel_size=2, norm_name=norm_name, res_block=True)
            for cin, cout in zip(up_inputs, reversed(feature_sizes))
        )
        self.refine = basic(stem_width, stem_width)
        self.head = nn.Conv2d(stem_width, num_classes, kernel_size=1)
        self.downsampling = 2 ** (len(feature_sizes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (h, w) = pad_to_multiple(x, self.downsampling)

        stem = self.stem(x)
        encoded = self.encoder(stem)  # at 1/4, 1/8, 1/16, 1/32
        levels = [x, stem, *encoded[:-1]]  # at 1/1 to 1/16
        skips = [block(level) for block, level in zip(self.skips, levels)]

        y = encoded[-1]
        for decoder in self.decoders:
            y = decoder(y, skips.pop())
        return self.head(self.refine(y))[..., :h, :w]


def _vmamba_to_swin_umamba(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # The VMamba patch embedding reads 3-channel 4x4 patches where Swin-UMamba reads 2x2
    # patches of the 48-channel stem, and the final norm and classifier are unused.
    skipped = ("patch_embed.", "norm.", "head.")
    return {f"encoder.{k}": v for k, v in state.items() if not k.startswith(skipped)}


@register_model(
    family="SMA",
    published_params_m=60.0,
    params_source="Borst and Kounev, arXiv 2603.13044 (2026), model table",
    default_input_size=224,
    gradcam_layer="refine",
    # NOTE: the URL of the VMamba-Tiny (v0, epoch 292) release asset, its SHA-256 and its
    # key names (`layers.i.blocks.j.self_attention.*`, `layers.i.downsample.*`) could not be
    # checked offline. Swin-UMamba's authors distribute the same file on Google Drive.
    pretrained=PretrainedSource(
        description="VMamba-Tiny ImageNet-1k (vssmtiny_dp01_ckpt_epoch_292)",
        url="https://github.com/MzeroMiko/VMamba/releases/download/%23v0cls/vssmtiny_dp01_ckpt_epoch_292.pth",
        key_map=_vmamba_to_swin_umamba,
    ),
)
def swin_umamba(in_channels: int, num_classes: int, **overrides) -> nn.Module:
    return SwinUMamba(in_channels, num_classes, **overrides)
