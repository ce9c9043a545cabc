"""Aggregated attention against an explicit per-pixel computation, in float64."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medbench.models.ops.aggregated_attention import (
    AggregatedAttention,
    LengthScaledAttention,
    local_window_mask,
    relative_position_table,
)


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    # Learnable biases start at zero or near zero; random values make every term count.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))


def _cpb(module, dy: float, dx: float, pretrain: int) -> torch.Tensor:
    """Position bias of every head for one offset in pixels, computed directly."""
    scaled = torch.tensor([dy, dx], dtype=torch.float64) * 8 / (pretrain - 1)
    scaled = torch.sign(scaled) * torch.log2(scaled.abs() + 1) / 3
    return module.cpb_fc2(torch.relu(module.cpb_fc1(scaled)))


def _aggregated_naive(module: AggregatedAttention, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    b, n, c = x.shape
    heads, d, window = module.num_heads, module.head_dim, module.window_size
    half = window // 2
    pool_h, pool_w = module.pooled_size(height, width)
    q_all = module.q(x)
    k_all, v_all = module.kv(x).chunk(2, dim=-1)

    # Pooled tokens: average of GELU(1x1 conv) over each adaptive-pooling cell.
    feature = module.act(module.sr(x.transpose(1, 2).reshape(b, c, height, width)))
    cells, centres = [], []
    for ph in range(pool_h):
        r0, r1 = (ph * height) // pool_h, -((-(ph + 1) * height) // pool_h)
        for pw in range(pool_w):
            c0, c1 = (pw * width) // pool_w, -((-(pw + 1) * width) // pool_w)
            cells.append(feature[:, :, r0:r1, c0:c1].mean(dim=(-2, -1)))
            centres.append(((r0 + r1 - 1) / 2, (c0 + c1 - 1) / 2))
    k_pool, v_pool = module.kv(module.norm(torch.stack(cells, dim=1))).chunk(2, dim=-1)

    out = torch.zeros(b, n, c, dtype=x.dtype)
    temperature = F.softplus(module.temperature).reshape(heads)
    for batch in range(b):
        for i in range(height):
            for j in range(width):
                token = i * width + j
                neighbours = [
                    (p, (i + dy) * width + (j + dx))
                    for p, (dy, dx) in enumerate((dy, dx) for dy in range(-half, half + 1) for dx in range(-half, half + 1))
                    if 0 <= i + dy < height and 0 <= j + dx < width
                ]
                scale = math.log(len(neighbours) + pool_h * pool_w)
                for h in range(heads):
                    part = slice(h * d, (h + 1) * d)
                    q = F.normalize(q_all[batch, token, part], dim=0)
                    q_scaled = (q + module.query_embedding[h, 0]) * temperature[h] * scale
                    logits = [
                        q_scaled @ F.normalize(k_all[batch, m, part], dim=0) + module.relative_pos_bias_local[h, p]
                        for p, m in neighbours
                    ]
                    logits += [
                        q_scaled @ F.normalize(k_pool[batch, cell, part], dim=0)
                        + _cpb(module, i - cy, j - cx, module.pretrain_size)[h]
                        for cell, (cy, cx) in enumerate(centres)
                    ]
                    weights = torch.stack(logits).softmax(0)
                    value = torch.zeros(d, dtype=x.dtype)
                    for slot, (p, m) in enumerate(neighbours):
                        learned = q @ module.learnable_tokens[h, :, p] + module.learnable_bias[h, 0, p]
                        value += (weights[slot] + learned) * v_all[batch, m, part]
                    for cell in range(len(centres)):
                        value += weights[len(neighbours) + cell] * v_pool[batch, cell, part]
                    out[batch, token, part] = value
    return module.proj(out)


def _full_naive(module: LengthScaledAttention, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    b, n, c = x.shape
    heads, d = module.num_heads, module.head_dim
    q_all, k_all, v_all = module.qkv(x).chunk(3, dim=-1)
    temperature = F.softplus(module.temperature).reshape(heads)
    out = torch.zeros(b, n, c, dtype=x.dtype)
    for batch in range(b):
        for token in range(n):
            i, j = divmod(token, width)
            for h in range(heads):
                part = slice(h * d, (h + 1) * d)
                q = (F.normalize(q_all[batch, token, part], dim=0) + module.query_embedding[h, 0]) * temperature[h] * math.log(n)
                logits = torch.stack([
                    q @ F.normalize(k_all[batch, m, part], dim=0)
                    + _cpb(module, i - m // width, j - m % width, module.pretrain_size)[h]
                    for m in range(n)
                ])
                out[batch, token, part] = logits.softmax(0) @ v_all[batch, :, part]
    return module.proj(out)


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize("height,width,sr_ratio", [(6, 6, 2), (5, 7, 2), (4, 6, 4)])
def test_aggregated_attention_matches_naive(height, width, sr_ratio):
    torch.manual_seed(0)
    module = AggregatedAttention(8, num_heads=2, sr_ratio=sr_ratio, window_size=3, pretrain_size=5).double()
    _randomize(module)
    x = torch.randn(2, height * width, 8, dtype=torch.float64)

    fast = module(x, height, width)
    naive = _aggregated_naive(module, x, height, width)

    assert fast.shape == x.shape
    assert _relative_error(fast, naive) < 1e-5


def test_length_scaled_attention_matches_naive():
    torch.manual_seed(0)
    module = LengthScaledAttention(8, num_heads=2, pretrain_size=4).double()
    _randomize(module)
    x = torch.randn(2, 12, 8, dtype=torch.float64)
    assert _relative_error(module(x, 3, 4), _full_naive(module, x, 3, 4)) < 1e-5


def test_local_window_mask_counts_corners():
    invalid, count = local_window_mask(3, 4, 3)
    assert count[0].item() == 4  # a corner pixel's window covers 2 x 2 pixels
    assert count[5].item() == 9  # interior pixel (1, 1)
    assert invalid[0].tolist() == [True, True, True, True, False, False, True, False, False]


def test_relative_position_table_indexes_every_pair():
    index, table = relative_position_table((4, 4), (2, 2), (4, 4))
    assert index.shape == (16 * 4,)
    assert table.shape[1] == 2
    assert int(index.max()) == table.shape[0] - 1


def test_aggregated_attention_gradients_finite():
    module = AggregatedAttention(8, num_heads=2, sr_ratio=2)
    x = torch.randn(1, 20, 8, requires_grad=True)
    module(x, 4, 5).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None)
