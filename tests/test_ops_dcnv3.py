"""DCNv3 pure-PyTorch operator against an explicit per-point bilinear reference, in float64."""

from __future__ import annotations

import math

import pytest
import torch

from medbench.models.ops.dcnv3 import HAS_COMPILED_DCNV3, dcnv3, dcnv3_pytorch, kernel_grid


def _bilinear(image: torch.Tensor, px: float, py: float) -> torch.Tensor:
    """Sample (H, W, C) `image` at pixel coordinates whose pixel centres sit at index + 0.5."""
    height, width, channels = image.shape
    x, y = px - 0.5, py - 0.5
    x0, y0 = math.floor(x), math.floor(y)
    value = torch.zeros(channels, dtype=image.dtype)
    for yi, wy in ((y0, y0 + 1 - y), (y0 + 1, y - y0)):
        for xi, wx in ((x0, x0 + 1 - x), (x0 + 1, x - x0)):
            if 0 <= yi < height and 0 <= xi < width:
                value += wy * wx * image[yi, xi]
    return value


def _dcnv3_naive(x, offset, mask, kernel_size, stride, padding, dilation, group, offset_scale):
    n, _, _, channels = x.shape
    points = kernel_size * kernel_size
    group_channels = channels // group
    padded = torch.nn.functional.pad(x, (0, 0, padding, padding, padding, padding))
    out_h, out_w = offset.shape[1:3]
    out = torch.zeros(n, out_h, out_w, channels, dtype=x.dtype)
    half = (dilation * (kernel_size - 1)) // 2
    for b in range(n):
        for i in range(out_h):
            for j in range(out_w):
                ref_x = half + 0.5 + j * stride
                ref_y = half + 0.5 + i * stride
                for g in range(group):
                    image = padded[b, :, :, g * group_channels:(g + 1) * group_channels]
                    for p in range(points):
                        grid_x = (p // kernel_size) * dilation - half
                        grid_y = (p % kernel_size) * dilation - half
                        k = (g * points + p) * 2
                        px = ref_x + offset_scale * (grid_x + offset[b, i, j, k].item())
                        py = ref_y + offset_scale * (grid_y + offset[b, i, j, k + 1].item())
                        weight = mask[b, i, j, g * points + p]
                        out[b, i, j, g * group_channels:(g + 1) * group_channels] += weight * _bilinear(image, px, py)
    return out


def _inputs(n, height, width, channels, out_h, out_w, group, points, scale, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, height, width, channels, generator=generator, dtype=torch.float64)
    offset = scale * torch.randn(n, out_h, out_w, group * points * 2, generator=generator, dtype=torch.float64)
    mask = torch.randn(n, out_h, out_w, group, points, generator=generator, dtype=torch.float64)
    mask = mask.softmax(-1).reshape(n, out_h, out_w, group * points)
    return x, offset, mask


CASES = [
    # kernel, stride, padding, dilation, group, offset_scale, offset magnitude (pixels)
    (3, 1, 1, 1, 2, 1.0, 1.5),
    (3, 2, 1, 1, 1, 1.0, 3.0),  # offsets reaching outside the image
    (3, 1, 2, 2, 2, 0.5, 1.0),
    (1, 1, 0, 1, 2, 1.0, 0.7),
]


@pytest.mark.parametrize("kernel,stride,padding,dilation,group,offset_scale,magnitude", CASES)
def test_dcnv3_matches_naive(kernel, stride, padding, dilation, group, offset_scale, magnitude):
    height, width, channels = 5, 6, 4
    out_h = (height + 2 * padding - (dilation * (kernel - 1) + 1)) // stride + 1
    out_w = (width + 2 * padding - (dilation * (kernel - 1) + 1)) // stride + 1
    x, offset, mask = _inputs(2, height, width, channels, out_h, out_w, group, kernel * kernel, magnitude)
    args = (kernel, stride, padding, dilation, group, offset_scale)

    fast = dcnv3_pytorch(x, offset, mask, *args)
    naive = _dcnv3_naive(x, offset, mask, *args)

    assert fast.shape == (2, out_h, out_w, channels)
    assert ((fast - naive).norm() / naive.norm()).item() < 1e-5


def test_dcnv3_centre_point_only_is_identity():
    # With zero offsets and one-hot modulation on the centre point, DCNv3 is the identity.
    x, offset, mask = _inputs(1, 4, 4, 4, 4, 4, 2, 9, 0.0)
    mask = torch.zeros_like(mask).reshape(1, 4, 4, 2, 9)
    mask[..., 4] = 1.0
    out = dcnv3_pytorch(x, offset, mask.reshape(1, 4, 4, 18), 3, 1, 1, 1, 2, 1.0)
    assert torch.allclose(out, x)


def test_kernel_grid_is_x_major():
    grid = kernel_grid(3, 1)
    assert grid[1].tolist() == [-1, 0]
    assert grid[3].tolist() == [0, -1]


def test_dcnv3_gradcheck():
    x, offset, mask = _inputs(1, 4, 4, 2, 4, 4, 1, 9, 0.8)
    for tensor in (x, offset, mask):
        tensor.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b, c: dcnv3_pytorch(a, b, c, 3, 1, 1, 1, 1, 1.0), (x, offset, mask))


def test_dcnv3_rejects_wrong_offset_channels():
    x, offset, mask = _inputs(1, 4, 4, 4, 4, 4, 2, 9, 1.0)
    with pytest.raises(ValueError, match="offset channels"):
        dcnv3_pytorch(x, offset[..., :-2], mask, 3, 1, 1, 1, 2, 1.0)


@pytest.mark.skipif(not (HAS_COMPILED_DCNV3 and torch.cuda.is_available()), reason="compiled DCNv3 not installed")
def test_compiled_dcnv3_matches_pytorch():
    x, offset, mask = _inputs(2, 9, 11, 16, 9, 11, 4, 9, 1.5)
    x, offset, mask = (t.float().cuda() for t in (x, offset, mask))
    compiled = dcnv3(x, offset, mask, 3, 1, 1, 1, 4, 1.0)
    reference = dcnv3_pytorch(x, offset, mask, 3, 1, 1, 1, 4, 1.0)
    assert ((compiled - reference).norm() / reference.norm()).item() < 1e-4
