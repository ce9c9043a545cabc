"""Aggregated attention of TransNeXt (Shi, "TransNeXt: Robust Foveal Visual Perception for
Vision Transformers", CVPR 2024), in plain PyTorch.

Every query attends, in one softmax, to two key sets: the k x k sliding window around its
own pixel (fine, local) and the tokens of an average-pooled copy of the feature map
(coarse, global). Logits are cosine similarities of L2-normalized queries and keys, with
a learnable query embedding added to the normalized query and a per-head temperature
(softplus) times the log of the number of keys of the query. This length scaling keeps
the sharpness of the softmax independent of the image size. Local logits get a learned
bias per window position; pooled logits get a continuous relative-position bias from a
small MLP on log-spaced coordinate offsets. The local branch also aggregates values with
query-dependent learnable weights (query x learnable tokens + learnable bias) added to its
attention weights. Window positions that fall outside the map are masked out.

`LengthScaledAttention` is the same attention over all tokens of a map, used in the last
stage. Both modules take any H and W; their position tables are rebuilt per input size
and cached. Parameter names follow the official release, so its checkpoints load by prefix.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AggregatedAttention", "LengthScaledAttention", "local_window_mask", "relative_position_table"]

CPB_HIDDEN = 512


@torch.no_grad()
def relative_position_table(
    query_size: tuple[int, int], key_size: tuple[int, int], pretrain_size: tuple[int, int], device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (index, table) of the log-spaced offsets between query pixels and (pooled) key cells.

    A key cell's coordinate is the mean of the query coordinates it pools. Offsets are
    divided by `pretrain_size - 1` and multiplied by 8, then mapped to
    sign(d) * log2(1 + |d|) / 3. `table` (U, 2) contains the distinct (dy, dx) pairs and
    `index` (Nq * Nk,) points every query-key pair into it, so the bias MLP runs on U rows only.
    """
    axes = []
    for q_len, k_len, p_len in zip(query_size, key_size, pretrain_size):
        q_axis = torch.arange(q_len, dtype=torch.float32, device=device)
        k_axis = F.adaptive_avg_pool1d(q_axis[None, None], k_len)[0, 0]
        axes.append((q_axis, k_axis, max(p_len - 1, 1)))
    (qh, kh, ph), (qw, kw, pw) = axes
    q_grid = torch.stack(torch.meshgrid(qh, qw, indexing="ij"), dim=-1).reshape(-1, 1, 2)
    k_grid = torch.stack(torch.meshgrid(kh, kw, indexing="ij"), dim=-1).reshape(1, -1, 2)
    scale = torch.tensor([8.0 / ph, 8.0 / pw], device=device)
    offsets = ((q_grid - k_grid) * scale).reshape(-1, 2)
    table, index = torch.unique(offsets, return_inverse=True, dim=0)
    table = torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)
    return index, table


@torch.no_grad()
def local_window_mask(height: int, width: int, window: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (invalid (N, window**2) bool, count (N, 1)) of window positions outside the map."""
    ones = torch.ones(1, 1, height, width, device=device)
    inside = F.unfold(ones, window, padding=window // 2)[0].transpose(0, 1)  # (N, window**2)
    return inside == 0, inside.sum(-1, keepdim=True)


class _PositionBias(nn.Module):
    """Continuous relative-position bias: MLP (2 -> 512 -> heads) on log-spaced offsets."""

    def __init__(self, num_heads: int, pretrain_size: int) -> None:
        super().__init__()
        self.cpb_fc1 = nn.Linear(2, CPB_HIDDEN)
        self.cpb_act = nn.ReLU(inplace=True)
        self.cpb_fc2 = nn.Linear(CPB_HIDDEN, num_heads)
        self.pretrain_size = pretrain_size
        self._tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def position_bias(self, query_size: tuple[int, int], key_size: tuple[int, int], device) -> torch.Tensor:
        """Return the (heads, Nq, Nk) bias for a query grid and a (pooled) key grid."""
        key = (query_size, key_size, str(device))
        if key not in self._tables:
            self._tables[key] = relative_position_table(
                query_size, key_size, (self.pretrain_size, self.pretrain_size), device=device
            )
        index, table = self._tables[key]
        bias = self.cpb_fc2(self.cpb_act(self.cpb_fc1(table.to(self.cpb_fc1.weight.dtype))))  # (U, heads)
        nq, nk = query_size[0] * query_size[1], key_size[0] * key_size[1]
        return bias.transpose(0, 1)[:, index].reshape(-1, nq, nk)


def _softplus_inverse(value: float) -> float:
    return math.log(math.expm1(value))


class AggregatedAttention(_PositionBias):
    """Pixel-focused aggregated attention on (B, N, C) tokens of an H x W map.

    Args:
        dim: channels C.
        num_heads: attention heads.
        sr_ratio: the pooled map has size (H // sr_ratio, W // sr_ratio), at least 1 x 1.
        window_size: odd side of the local window (3 in TransNeXt).
        pretrain_size: side of the feature map at pretraining (224 / stride); it scales
            the relative coordinates of the position-bias MLP.
        qkv_bias: bias in the query and key-value projections.
    """

    def __init__(
        self, dim: int, num_heads: int, sr_ratio: int, window_size: int = 3, pretrain_size: int = 56,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__(num_heads, pretrain_size)
        if dim % num_heads:
            raise ValueError(f"AggregatedAttention dim {dim} must divide by num_heads {num_heads}.")
        if window_size % 2 == 0:
            raise ValueError(f"AggregatedAttention window_size must be odd, got {window_size}.")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.sr_ratio = sr_ratio
        self.window_size = window_size
        local_len = window_size**2

        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.sr = nn.Conv2d(dim, dim, 1)
        self.norm = nn.LayerNorm(dim)
        self.act = nn.GELU()
        # softplus(temperature) starts at 1 / 0.24.
        self.temperature = nn.Parameter(torch.full((num_heads, 1, 1), _softplus_inverse(1 / 0.24)))
        self.query_embedding = nn.Parameter(nn.init.trunc_normal_(torch.empty(num_heads, 1, self.head_dim), std=0.02))
        self.relative_pos_bias_local = nn.Parameter(nn.init.trunc_normal_(torch.empty(num_heads, local_len), std=4e-4))
        self.learnable_tokens = nn.Parameter(
            nn.init.trunc_normal_(torch.empty(num_heads, self.head_dim, local_len), std=0.02)
        )
        self.learnable_bias = nn.Parameter(torch.zeros(num_heads, 1, local_len))

    def pooled_size(self, height: int, width: int) -> tuple[int, int]:
        return max(height // self.sr_ratio, 1), max(width // self.sr_ratio, 1)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        b, n, c = x.shape
        heads, head_dim, window = self.num_heads, self.head_dim, self.window_size
        pool_h, pool_w = self.pooled_size(height, width)
        invalid, local_count = local_window_mask(height, width, window, device=x.device)

        # Queries: (B, heads, N, d), normalized, embedded, scaled by temperature x log(keys seen).
        q = F.normalize(self.q(x).reshape(b, n, heads, head_dim).transpose(1, 2), dim=-1)
        length_scale = torch.log(local_count + pool_h * pool_w).to(x.dtype)  # (N, 1)
        q_scaled = (q + self.query_embedding) * F.softplus(self.temperature) * length_scale

        # Local keys and values, unfolded to (B, heads, N, d, window**2); zero outside the map.
        k_local, v_local = self.kv(x).chunk(2, dim=-1)
        k_local = F.normalize(k_local.reshape(b, n, heads, head_dim), dim=-1).reshape(b, n, c)
        kv_map = torch.cat([k_local, v_local], dim=-1).transpose(1, 2).reshape(b, 2 * c, height, width)
        kv_unfolded = F.unfold(kv_map, window, padding=window // 2)
        kv_unfolded = kv_unfolded.reshape(b, 2 * heads, head_dim, window**2, n).permute(0, 1, 4, 2, 3)
        k_local, v_local = kv_unfolded.chunk(2, dim=1)
        logits_local = (q_scaled.unsqueeze(-2) @ k_local).squeeze(-2) + self.relative_pos_bias_local.unsqueeze(1)
        logits_local = logits_local.masked_fill(invalid, float("-inf"))

        # Pooled keys and values from GELU(1x1 conv) -> average pooling -> LayerNorm.
        pooled = self.act(self.sr(x.transpose(1, 2).reshape(b, c, height, width)))
        pooled = F.adaptive_avg_pool2d(pooled, (pool_h, pool_w)).flatten(2).transpose(1, 2)
        k_pool, v_pool = self.kv(self.norm(pooled)).reshape(b, -1, 2 * heads, head_dim).transpose(1, 2).chunk(2, dim=1)
        bias_pool = self.position_bias((height, width), (pool_h, pool_w), x.device).to(x.dtype)
        logits_pool = q_scaled @ F.normalize(k_pool, dim=-1).transpose(-2, -1) + bias_pool

        # One softmax over both key sets, then separate aggregation.
        attn = torch.cat([logits_local, logits_pool], dim=-1).softmax(dim=-1)
        attn_local, attn_pool = attn.split([window**2, pool_h * pool_w], dim=-1)
        weights_local = attn_local + q @ self.learnable_tokens + self.learnable_bias
        out = (weights_local.unsqueeze(-2) @ v_local.transpose(-2, -1)).squeeze(-2) + attn_pool @ v_pool
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class LengthScaledAttention(_PositionBias):
    """Full attention with the same normalized, length-scaled logits and position-bias MLP.

    Args:
        dim: channels C.
        num_heads: attention heads.
        pretrain_size: side of the feature map at pretraining (224 / 32 = 7 for the last stage).
        qkv_bias: bias in the query-key-value projection.
    """

    def __init__(self, dim: int, num_heads: int, pretrain_size: int = 7, qkv_bias: bool = True) -> None:
        super().__init__(num_heads, pretrain_size)
        if dim % num_heads:
            raise ValueError(f"LengthScaledAttention dim {dim} must divide by num_heads {num_heads}.")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.temperature = nn.Parameter(torch.full((num_heads, 1, 1), _softplus_inverse(1 / 0.24)))
        self.query_embedding = nn.Parameter(nn.init.trunc_normal_(torch.empty(num_heads, 1, self.head_dim), std=0.02))

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3 * self.num_heads, self.head_dim).transpose(1, 2).chunk(3, dim=1)
        q_scaled = (F.normalize(q, dim=-1) + self.query_embedding) * F.softplus(self.temperature) * math.log(n)
        bias = self.position_bias((height, width), (height, width), x.device).to(x.dtype)
        attn = (q_scaled @ F.normalize(k, dim=-1).transpose(-2, -1) + bias).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))
