"""The PyTorch selective scan against a plain loop over time steps, in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medbench.models.ops.selective_scan import selective_scan, selective_scan_torch


def loop_scan(u, delta, A, B, C, D, z, delta_bias):
    """Reference: the recurrence written out one channel group and time step at a time."""
    batch, channels, length = u.shape
    groups = B.shape[1]
    per_group = channels // groups
    delta = F.softplus(delta + delta_bias[None, :, None])
    y = torch.zeros_like(u)
    for b in range(batch):
        for d in range(channels):
            g = d // per_group
            h = torch.zeros(A.shape[1], dtype=u.dtype)
            for t in range(length):
                h = torch.exp(delta[b, d, t] * A[d]) * h + delta[b, d, t] * B[b, g, :, t] * u[b, d, t]
                y[b, d, t] = (C[b, g, :, t] * h).sum() + D[d] * u[b, d, t]
    return y * F.silu(z)


def random_inputs(length, groups=2, channels=4, state=3, batch=2):
    generator = torch.Generator().manual_seed(length)

    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    return dict(
        u=rand(batch, channels, length),
        delta=rand(batch, channels, length),
        A=-torch.exp(rand(channels, state)),
        B=rand(batch, groups, state, length),
        C=rand(batch, groups, state, length),
        D=rand(channels),
        z=rand(batch, channels, length),
        delta_bias=rand(channels),
    )


def relative_error(actual, expected):
    # Some gradients are exactly zero (A's for a single time step), so avoid dividing by 0.
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("chunk_size", [1, 32])
@pytest.mark.parametrize("length", [1, 7, 64, 150])
def test_scan_matches_loop(length, chunk_size):
    inputs = random_inputs(length)
    expected = loop_scan(**inputs)
    actual = selective_scan_torch(**inputs, delta_softplus=True, chunk_size=chunk_size)
    assert actual.dtype == torch.float64
    assert relative_error(actual, expected) < 1e-5


def test_chunk_size_does_not_change_result():
    inputs = random_inputs(100)
    whole = selective_scan_torch(**inputs, delta_softplus=True, chunk_size=128)
    for chunk_size in (1, 5, 16):
        chunked = selective_scan_torch(**inputs, delta_softplus=True, chunk_size=chunk_size)
        assert relative_error(chunked, whole) < 1e-10


def test_shared_b_and_c_without_group_axis():
    inputs = random_inputs(20, groups=1)
    expected = selective_scan_torch(**inputs, delta_softplus=True)
    inputs["B"], inputs["C"] = inputs["B"][:, 0], inputs["C"][:, 0]
    assert relative_error(selective_scan_torch(**inputs, delta_softplus=True), expected) < 1e-12


def test_dispatch_on_cpu_uses_torch_version():
    inputs = random_inputs(10)
    dispatched = selective_scan(**inputs, delta_softplus=True)
    assert torch.equal(dispatched, selective_scan_torch(**inputs, delta_softplus=True))


def test_strong_decay_stays_finite():
    inputs = random_inputs(200)
    inputs["A"] = inputs["A"] * 1e3
    inputs["delta"] = inputs["delta"] + 5.0
    assert torch.isfinite(selective_scan_torch(**inputs, delta_softplus=True)).all()


@pytest.mark.parametrize("chunk_size", [1, 4])
@pytest.mark.parametrize("length", [1, 12, 13])
def test_gradients_match_loop(length, chunk_size):
    inputs = random_inputs(length, channels=2, groups=1)
    for tensor in inputs.values():
        tensor.requires_grad_(True)
    expected = torch.autograd.grad(loop_scan(**inputs).sum(), list(inputs.values()))
    actual = torch.autograd.grad(
        selective_scan_torch(**inputs, delta_softplus=True, chunk_size=chunk_size).sum(), list(inputs.values())
    )
    for name, a, e in zip(inputs, actual, expected):
        assert relative_error(a, e) < 1e-5, name


def test_channels_not_multiple_of_groups_rejected():
    inputs = random_inputs(5, groups=3)
    with pytest.raises(ValueError, match="multiple of the groups"):
        selective_scan_torch(**inputs)
