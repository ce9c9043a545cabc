"""Kolmogorov-Arnold network layer (Liu et al., "KAN: Kolmogorov-Arnold Networks", arXiv 2404.19756).

Each input-output edge of a KAN layer carries a learnable one-dimensional function, here
written as w_base * SiLU(x) + w_spline * sum_i c_i B_i(x) with cubic B-splines B_i on a
uniform knot grid. Summing these functions over the inputs of an output gives a layer whose
cost is one matrix product over the stacked spline bases, as in the "efficient KAN"
formulation used by U-KAN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["KANLinear", "b_spline_bases"]


def b_spline_bases(x: torch.Tensor, knots: torch.Tensor, order: int) -> torch.Tensor:
    """Evaluate all B-spline bases of degree `order` with the Cox-de Boor recursion.

    Args:
        x: values, (..., features).
        knots: non-decreasing knots per feature, (features, num_knots).
        order: spline degree (3 for cubic).

    Returns:
        (..., features, num_knots - 1 - order). Bases are zero outside
        [knots[0], knots[-1]), and the degree-0 bases are half-open intervals [t_i, t_{i+1}).
    """
    x = x.unsqueeze(-1)
    bases = ((x >= knots[:, :-1]) & (x < knots[:, 1:])).to(x.dtype)
    for k in range(1, order + 1):
        left = (x - knots[:, : -(k + 1)]) / (knots[:, k:-1] - knots[:, : -(k + 1)])
        right = (knots[:, k + 1 :] - x) / (knots[:, k + 1 :] - knots[:, 1:-k])
        bases = left * bases[..., :-1] + right * bases[..., 1:]
    return bases


class KANLinear(nn.Module):
    """KAN layer mapping (..., in_features) to (..., out_features).

    Args:
        in_features: input size.
        out_features: output size.
        grid_size: intervals of the uniform grid on `grid_range` (default 5).
        spline_order: B-spline degree (default 3); the grid is extended by this many
            intervals on both sides so that every basis is complete on `grid_range`.
        grid_range: interval on which the splines are defined; inputs outside the extended
            grid only see the SiLU branch.
        scale_noise: scale of the random initial spline coefficients.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        grid_size: int = 5,
        spline_order: int = 3,
        grid_range: tuple[float, float] = (-1.0, 1.0),
        scale_noise: float = 0.1,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.spline_order = spline_order
        step = (grid_range[1] - grid_range[0]) / grid_size
        knots = torch.arange(-spline_order, grid_size + spline_order + 1) * step + grid_range[0]
        self.register_buffer("knots", knots.expand(in_features, -1).contiguous())

        num_bases = grid_size + spline_order
        self.base_weight = nn.Parameter(torch.empty(out_features, in_features))
        self.spline_weight = nn.Parameter(torch.empty(out_features, in_features, num_bases))
        self.spline_scaler = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.base_weight, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.spline_scaler, a=math.sqrt(5))
        nn.init.uniform_(self.spline_weight, -scale_noise / grid_size, scale_noise / grid_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, self.in_features)
        base = F.linear(F.silu(x), self.base_weight)
        bases = b_spline_bases(x, self.knots, self.spline_order).flatten(1)
        weight = (self.spline_weight * self.spline_scaler.unsqueeze(-1)).flatten(1)
        out = base + F.linear(bases, weight)
        return out.reshape(*shape[:-1], self.out_features)
