"""MISSFormer (Huang et al., "MISSFormer: An Effective Transformer for 2D Medical Image
Segmentation", IEEE TMI 2022, arXiv 2109.07162).

Encoder: four stages at 1/4 to 1/32 (widths 64, 128, 320, 512) with overlapping patch
embeddings and two transformer blocks each. Attention is efficient self-attention: keys
and values come from a copy of the feature map reduced by a strided convolution (ratios
8, 4, 2, 1). The feed-forward part is the Enhanced Mix-FFN: a linear expansion by 4, a
3x3 depthwise convolution with a skip connection around it and layer normalization,
GELU and a linear projection back.

Enhanced Transformer Context Bridge: the four encoder outputs are flattened and cut into
64-channel tokens, concatenated into one sequence and passed through transformer layers
whose attention spans all scales at once (keys and values reduced per scale as in the
encoder). The feed-forward part is split again by scale, with one Enhanced Mix-FFN per
scale at its own width.

Decoder: four stages from 1/32 to 1/4; each fuses the bridge output of its scale with the
upsampled decoder features by a linear layer, applies two transformer blocks and expands
the patches (a linear layer and a pixel rearrangement) to the next scale; a final 4x
expansion and a 1x1 convolution give the logits. MISSFormer works on a 224x224 grid;
inputs of any size are resized to it and the logits resized back. About 42 M parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from medbench.models.layers import resize_to
from medbench.models.registry import register_model

__all__ = ["MISSFormer"]


class EfficientAttention(nn.Module):
    """Multi-head attention whose keys and values come from a spatially reduced map.

    `forward(queries, key_maps)` takes queries (B, N, dim) and a list of (B, C_i, H_i, W_i)
    maps. Each map is reduced by a strided convolution with its own ratio and cut into
    `dim`-wide tokens. The tokens of all maps together are the keys and values.
    """

    def __init__(self, dim: int, num_heads: int, map_channels: tuple[int, ...], ratios: tuple[int, ...]) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.reduce = nn.ModuleList(
            nn.Conv2d(c, c, kernel_size=r, stride=r) if r > 1 else nn.Identity() for c, r in zip(map_channels, ratios)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, queries: torch.Tensor, key_maps: list[torch.Tensor]) -> torch.Tensor:
        b, n, c = queries.shape
        heads = self.num_heads
        reduced = [reduce(m).flatten(2).transpose(1, 2).reshape(b, -1, c) for reduce, m in zip(self.reduce, key_maps)]
        context = self.norm(torch.cat(reduced, dim=1))
        q = self.query(queries).reshape(b, n, heads, c // heads).transpose(1, 2)
        k, v = self.key_value(context).reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class EnhancedMixFFN(nn.Module):
    """Linear expansion, 3x3 depthwise convolution with a skip and layer norm, GELU, projection."""

    def __init__(self, dim: int, expansion: int = 4) -> None:
        super().__init__()
        hidden = dim * expansion
        self.fc1 = nn.Linear(dim, hidden)
        self.depthwise = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.norm = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.fc1(tokens)
        b, n, c = x.shape
        mixed = self.depthwise(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
        return self.fc2(F.gelu(self.norm(mixed + x)))


class TransformerBlock(nn.Module):
    """Pre-norm efficient self-attention and Enhanced Mix-FFN on the (B, h*w, dim) tokens of one map."""

    def __init__(self, dim: int, num_heads: int, ratio: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = EfficientAttention(dim, num_heads, (dim,), (ratio,))
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = EnhancedMixFFN(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = tokens.shape
        normed = self.norm1(tokens)
        feature_map = normed.transpose(1, 2).reshape(b, c, h, w)
        tokens = tokens + self.drop_path(self.attention(normed, [feature_map]))
        return tokens + self.drop_path(self.ffn(self.norm2(tokens), h, w))


class EncoderStage(nn.Module):
    """Overlapping patch embedding (strided convolution and layer norm), transformer blocks, norm."""

    def __init__(
        self, in_channels: int, dim: int, patch: int, stride: int, depth: int, heads: int, ratio: int, drop_path: float
    ) -> None:
        super().__init__()
        self.embed = nn.Conv2d(in_channels, dim, patch, stride=stride, padding=patch // 2)
        self.embed_norm = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, ratio, drop_path) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        b, c, h, w = x.shape
        tokens = self.embed_norm(x.flatten(2).transpose(1, 2))
        for block in self.blocks:
            tokens = block(tokens, h, w)
        return self.norm(tokens).transpose(1, 2).reshape(b, c, h, w)


class BridgeLayer(nn.Module):
    """One layer of the Enhanced Transformer Context Bridge over all four scales."""

    def __init__(self, dims: tuple[int, ...], ratios: tuple[int, ...], token_dim: int, num_heads: int) -> None:
        super().__init__()
        self.dims = dims
        self.token_dim = token_dim
        self.norm1 = nn.LayerNorm(token_dim)
        self.attention = EfficientAttention(token_dim, num_heads, dims, ratios)
        self.norms2 = nn.ModuleList(nn.LayerNorm(d) for d in dims)
        self.ffns = nn.ModuleList(EnhancedMixFFN(d) for d in dims)

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        b = maps[0].shape[0]
        # Each (B, C, H, W) map becomes (B, H*W*C / token_dim, token_dim) tokens.
        scale_tokens = [m.flatten(2).transpose(1, 2) for m in maps]
        tokens = torch.cat([t.reshape(b, -1, self.token_dim) for t in scale_tokens], dim=1)
        normed = self.norm1(tokens)
        sizes = [t.shape[1] * t.shape[2] // self.token_dim for t in scale_tokens]
        normed_maps = [
            part.reshape(b, -1, m.shape[1]).transpose(1, 2).reshape(m.shape)
            for part, m in zip(normed.split(sizes, dim=1), maps)
        ]
        tokens = tokens + self.attention(normed, normed_maps)

        outputs = []
        for part, m, norm, ffn in zip(tokens.split(sizes, dim=1), maps, self.norms2, self.ffns):
            b, c, h, w = m.shape
            part = part.reshape(b, h * w, c)
            part = part + ffn(norm(part), h, w)
            outputs.append(part.transpose(1, 2).reshape(b, c, h, w))
        return outputs


class PatchExpand(nn.Module):
    """Multiply H and W by `scale`: a linear layer to scale**2 * out_dim channels, then a pixel rearrangement."""

    def __init__(self, dim: int, out_dim: int, scale: int = 2) -> None:
        super().__init__()
        self.expand = nn.Linear(dim, scale**2 * out_dim, bias=False)
        self.shuffle = nn.PixelShuffle(scale)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.expand(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.shuffle(x)
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class DecoderStage(nn.Module):
    """Fuse the decoder input with the bridge output (linear layer), two transformer blocks, expand."""

    def __init__(self, dim: int, in_dim: int | None, out_dim: int, heads: int, ratio: int, scale: int) -> None:
        super().__init__()
        self.fuse = nn.Linear(in_dim + dim, dim) if in_dim else None
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, ratio) for _ in range(2))
        self.expand = PatchExpand(dim, out_dim, scale)

    def forward(self, skip: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        b, c, h, w = skip.shape
        tokens = skip if x is None else torch.cat([x, skip], dim=1)
        tokens = tokens.flatten(2).transpose(1, 2)
        if self.fuse is not None:
            tokens = self.fuse(tokens)
        for block in self.blocks:
            tokens = block(tokens, h, w)
        return self.expand(tokens.transpose(1, 2).reshape(b, c, h, w))


class MISSFormer(nn.Module):
    """MISSFormer for any input size (resized to `img_size` and back).

    Args:
        in_channels: input image channels.
        num_classes: output channels K.
        img_size: side of the internal square grid (default 224); a multiple of 32.
        dims: widths of the four scales (default 64, 128, 320, 512).
        heads: attention heads per scale (default 1, 2, 5, 8).
        ratios: key/value reduction of the efficient attention per scale (default 8, 4, 2, 1).
        depth: transformer blocks per encoder stage (default 2).
        bridge_depth: layers of the context bridge (default 4).
        drop_path_rate: stochastic depth of the encoder blocks (default 0.1).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        img_size: int = 224,
        dims: tuple[int, int, int, int] = (64, 128, 320, 512),
        heads: tuple[int, int, int, int] = (1, 2, 5, 8),
        ratios: tuple[int, int, int, int] = (8, 4, 2, 1),
        depth: int = 2,
        bridge_depth: int = 4,
        drop_path_rate: float = 0.1,
    ) -> None:
        super().__init__()
        if img_size % 32:
            raise ValueError(f"img_size must be a multiple of 32, got {img_size}.")
        self.img_size = img_size
        patches = ((7, 4), (3, 2), (3, 2), (3, 2))
        ins = (in_channels,) + dims[:-1]
        self.encoder = nn.ModuleList(
            EncoderStage(ins[i], dims[i], *patches[i], depth, heads[i], ratios[i], drop_path_rate * i / 3)
            for i in range(4)
        )
        self.bridge = nn.Sequential(*(BridgeLayer(dims, ratios, dims[0], heads[0]) for _ in range(bridge_depth)))
        # Decoder, deepest first: stage i works at scale 3 - i and expands to the next one.
        self.decoder = nn.ModuleList(
            DecoderStage(
                dim=dims[s],
                in_dim=None if s == 3 else dims[s],
                out_dim=dims[s - 1] if s > 0 else dims[0],
                heads=heads[s],
                ratio=ratios[s],
                scale=2 if s > 0 else 4,
            )
            for s in reversed(range(4))
        )
        self.head = nn.Conv2d(dims[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        x = resize_to(x, (self.img_size, self.img_size))

        features = []
        for stage in self.encoder:
            x = stage(x)
            features.append(x)
        bridged = self.bridge(features)

        y = None
        for stage, skip in zip(self.decoder, reversed(bridged)):
            y = stage(skip, y)
        return resize_to(self.head(y), tuple(size))


@register_model(
    family="SMA",
    published_params_m=42.0,
    params_source="Borst and Kounev, arXiv 2603.13044 (2026), model table",
    default_input_size=224,
    gradcam_layer="decoder.3",
)
def missformer(in_channels: int, num_classes: int, **overrides) -> nn.Module:
    return MISSFormer(in_channels, num_classes, **overrides)
