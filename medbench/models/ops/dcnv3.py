"""DCNv3, the deformable convolution of InternImage (Wang et al., "InternImage: Exploring
Large-Scale Vision Foundation Models with Deformable Convolutions", CVPR 2023).

Each output pixel of each channel group samples the input at K = k*k points: the regular
k x k kernel grid around the pixel, moved by learned offsets. The samples are bilinear
(zero outside the padded input) and their weighted sum uses modulation scalars that the
caller has already softmax-normalized over the K points of a group. There are no weights
inside the operator: the projections live in the `DCNv3` module of `internimage.py`.

Conventions (those of the official operator, so that checkpoints transfer):
- tensors are channels-last: input (N, H, W, C), offset (N, H', W', G*K*2),
  mask (N, H', W', G*K);
- kernel points are ordered x-major (point p = ix * k + iy) and every offset pair is (dx, dy);
- a pixel's centre is at (index + 0.5). The reference point of output (i, j) is the
  centre of its k x k window in the padded input. The sampling location, in pixels, is
  reference + offset_scale * (grid point + offset).

`dcnv3` calls the compiled `DCNv3` extension of the InternImage repository when it is
importable and the tensors are on a GPU, else the pure-PyTorch path `dcnv3_pytorch`.
"""

from __future__ import annotations

import importlib
import logging

import torch
import torch.nn.functional as F

__all__ = ["dcnv3", "dcnv3_pytorch", "kernel_grid", "HAS_COMPILED_DCNV3"]

log = logging.getLogger(__name__)

try:
    _dcnv3_ext = importlib.import_module("DCNv3")
except ImportError:
    _dcnv3_ext = None

HAS_COMPILED_DCNV3 = _dcnv3_ext is not None

IM2COL_STEP = 256


def kernel_grid(kernel_size: int, dilation: int, device=None, dtype=None) -> torch.Tensor:
    """Return the (k*k, 2) kernel point offsets (dx, dy) in pixels, x-major, centred on 0."""
    half = (dilation * (kernel_size - 1)) // 2
    steps = torch.arange(kernel_size, device=device, dtype=dtype) * dilation - half
    grid_x, grid_y = torch.meshgrid(steps, steps, indexing="ij")
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=-1)


def _check_shapes(x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, points: int, group: int) -> None:
    if x.shape[-1] % group:
        raise ValueError(f"DCNv3 channels {x.shape[-1]} must divide by group {group}.")
    if offset.shape[-1] != group * points * 2 or mask.shape[-1] != group * points:
        raise ValueError(
            f"DCNv3 with group {group} and {points} kernel points needs offset channels "
            f"{group * points * 2} and mask channels {group * points}, got {offset.shape[-1]} and "
            f"{mask.shape[-1]}."
        )
    if offset.shape[:3] != mask.shape[:3]:
        raise ValueError(f"DCNv3 offset {tuple(offset.shape)} and mask {tuple(mask.shape)} differ in (N, H', W').")


def dcnv3_pytorch(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    kernel_size: int = 3,
    stride: int = 1,
    padding: int = 1,
    dilation: int = 1,
    group: int = 1,
    offset_scale: float = 1.0,
) -> torch.Tensor:
    """Apply DCNv3 with `grid_sample`; returns (N, H', W', C). Shapes as in the module docstring."""
    n, _, _, channels = x.shape
    points = kernel_size * kernel_size
    _check_shapes(x, offset, mask, points, group)
    x = F.pad(x, (0, 0, padding, padding, padding, padding))
    height, width = x.shape[1:3]
    out_h = (height - (dilation * (kernel_size - 1) + 1)) // stride + 1
    out_w = (width - (dilation * (kernel_size - 1) + 1)) // stride + 1
    if offset.shape[1:3] != (out_h, out_w):
        raise ValueError(f"DCNv3 offset spatial size {tuple(offset.shape[1:3])} must be the output size {(out_h, out_w)}.")

    # Sampling locations in pixels of the padded input, (N, H', W', G, K, 2) as (x, y).
    centre = (dilation * (kernel_size - 1)) // 2 + 0.5
    ref_y = centre + stride * torch.arange(out_h, device=x.device, dtype=x.dtype)
    ref_x = centre + stride * torch.arange(out_w, device=x.device, dtype=x.dtype)
    ref = torch.stack(torch.meshgrid(ref_x, ref_y, indexing="xy"), dim=-1)  # (H', W', 2)
    grid = kernel_grid(kernel_size, dilation, device=x.device, dtype=x.dtype)  # (K, 2)
    offset = offset.reshape(n, out_h, out_w, group, points, 2)
    locations = ref[None, :, :, None, None, :] + offset_scale * (grid + offset)

    # grid_sample with align_corners=False maps pixel coordinate u in [0, size] to 2u/size - 1.
    normalizer = torch.tensor([width, height], device=x.device, dtype=x.dtype)
    sampling_grid = 2 * locations / normalizer - 1
    sampling_grid = sampling_grid.permute(0, 3, 1, 2, 4, 5).reshape(n * group, out_h * out_w, points, 2)

    group_channels = channels // group
    values = x.reshape(n, height, width, group, group_channels).permute(0, 3, 4, 1, 2)
    values = values.reshape(n * group, group_channels, height, width)
    sampled = F.grid_sample(values, sampling_grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # sampled: (N*G, C/G, H'*W', K), weighted by the modulation of each point.
    weights = mask.reshape(n, out_h * out_w, group, points).permute(0, 2, 1, 3).reshape(n * group, 1, out_h * out_w, points)
    out = (sampled * weights).sum(-1)
    out = out.reshape(n, group, group_channels, out_h, out_w).permute(0, 3, 4, 1, 2)
    return out.reshape(n, out_h, out_w, channels)


class _CompiledDCNv3(torch.autograd.Function):
    """Autograd wrapper of the `DCNv3` CUDA extension (forward and backward kernels)."""

    @staticmethod
    def forward(ctx, x, offset, mask, kernel_size, stride, padding, dilation, group, offset_scale):
        ctx.args = (kernel_size, kernel_size, stride, stride, padding, padding, dilation, dilation,
                    group, x.shape[-1] // group, offset_scale)
        ctx.save_for_backward(x, offset, mask)
        return _dcnv3_ext.dcnv3_forward(x, offset, mask, *ctx.args, IM2COL_STEP, False)

    @staticmethod
    def backward(ctx, grad_output):
        x, offset, mask = ctx.saved_tensors
        grads = _dcnv3_ext.dcnv3_backward(
            x, offset, mask, *ctx.args, grad_output.contiguous(), IM2COL_STEP, False
        )
        return (*grads, None, None, None, None, None, None)


def dcnv3(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    kernel_size: int = 3,
    stride: int = 1,
    padding: int = 1,
    dilation: int = 1,
    group: int = 1,
    offset_scale: float = 1.0,
) -> torch.Tensor:
    """Apply DCNv3, with the compiled kernel on GPU when installed, else `dcnv3_pytorch`."""
    if HAS_COMPILED_DCNV3 and x.is_cuda:
        # NOTE: the extension's argument list (a trailing remove_center flag) follows
        # InternImage's DCNv3 1.1 package; it was not installed here, so this path is untested.
        return _CompiledDCNv3.apply(
            x.contiguous(), offset.contiguous(), mask.contiguous(),
            kernel_size, stride, padding, dilation, group, offset_scale,
        )
    return dcnv3_pytorch(x, offset, mask, kernel_size, stride, padding, dilation, group, offset_scale)
