"""The KAN layer's B-spline bases against a direct Cox-de Boor evaluation, in float64."""

from __future__ import annotations

import torch

from medbench.models.ops.kan import KANLinear, b_spline_bases


def cox_de_boor(x: float, knots: list[float], i: int, degree: int) -> float:
    """Reference: the recursive definition of the i-th B-spline of `degree`, one scalar at a time."""
    if degree == 0:
        return 1.0 if knots[i] <= x < knots[i + 1] else 0.0
    left = (x - knots[i]) / (knots[i + degree] - knots[i]) * cox_de_boor(x, knots, i, degree - 1)
    right = (knots[i + degree + 1] - x) / (knots[i + degree + 1] - knots[i + 1]) * cox_de_boor(
        x, knots, i + 1, degree - 1
    )
    return left + right


def test_bases_match_cox_de_boor():
    generator = torch.Generator().manual_seed(0)
    features, order = 3, 3
    # Non-uniform knots per feature, so that the indexing of every knot difference counts.
    steps = torch.rand(features, 12, generator=generator, dtype=torch.float64) + 0.1
    knots = torch.cumsum(steps, dim=1) - 3.0
    x = torch.rand(50, features, generator=generator, dtype=torch.float64) * 8.0 - 4.0

    actual = b_spline_bases(x, knots, order)

    assert actual.shape == (50, features, 12 - 1 - order)
    expected = torch.tensor(
        [
            [
                [cox_de_boor(x[s, f].item(), knots[f].tolist(), i, order) for i in range(12 - 1 - order)]
                for f in range(features)
            ]
            for s in range(50)
        ],
        dtype=torch.float64,
    )
    assert ((actual - expected).norm() / expected.norm()).item() < 1e-5


def test_bases_partition_unity_inside_grid():
    layer = KANLinear(4, 2).double()
    x = torch.linspace(-0.999, 0.999, 101, dtype=torch.float64)[:, None].expand(-1, 4)
    total = b_spline_bases(x, layer.knots, layer.spline_order).sum(-1)
    assert torch.allclose(total, torch.ones_like(total))


def test_layer_output_shape_and_gradient():
    layer = KANLinear(6, 5)
    x = torch.randn(2, 7, 6, requires_grad=True)
    out = layer(x)
    assert out.shape == (2, 7, 5)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert layer.spline_weight.grad.abs().sum() > 0


def test_layer_matches_sum_of_edge_functions():
    torch.manual_seed(0)
    layer = KANLinear(3, 2).double()
    x = torch.rand(4, 3, dtype=torch.float64) * 2 - 1
    bases = b_spline_bases(x, layer.knots, layer.spline_order)  # (4, 3, bases)
    expected = torch.zeros(4, 2, dtype=torch.float64)
    for o in range(2):
        for i in range(3):
            spline = (bases[:, i] * layer.spline_weight[o, i]).sum(-1) * layer.spline_scaler[o, i]
            expected[:, o] += layer.base_weight[o, i] * torch.nn.functional.silu(x[:, i]) + spline
    assert torch.allclose(layer(x), expected)
