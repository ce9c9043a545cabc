"""Selective scan, the state-space recurrence of Mamba (Gu and Dao, arXiv 2312.00752).

For every channel d and state index n the scan runs the discretized linear recurrence

    h[t] = exp(delta[t] * A[d, n]) * h[t-1] + delta[t] * B[n, t] * u[t]
    y[t] = sum_n C[n, t] * h[t, n] + D[d] * u[t]

over the sequence axis, with an input-dependent step `delta`. `selective_scan` takes the
arguments of `mamba_ssm`'s `selective_scan_fn` so that the compiled CUDA kernel replaces
the PyTorch version whenever it is installed and the inputs are on a GPU.

On a CPU the PyTorch version steps through the sequence one element at a time, with one
fused multiply-add per step into a preallocated state buffer. On other devices it runs a
Hillis-Steele parallel prefix scan inside chunks of the sequence (log2(chunk) vectorized
steps) and carries the state sequentially from chunk to chunk. Both only multiply decay
factors in [0, 1], so they cannot overflow, unlike scans that divide by cumulative products.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["HAS_CUDA_KERNEL", "selective_scan", "selective_scan_torch"]

try:  # the compiled kernel of the mamba-ssm package, when it is installed
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _cuda_selective_scan
except ImportError:
    _cuda_selective_scan = None

HAS_CUDA_KERNEL = _cuda_selective_scan is not None


def _time_major_groups(x: torch.Tensor) -> torch.Tensor:
    """Reshape B or C from (batch, groups, state, length) or (batch, state, length) to (length, batch, groups, 1, state)."""
    if x.dim() == 3:  # (batch, state, length): one group shared by all channels
        x = x.unsqueeze(1)
    return x.permute(3, 0, 1, 2).unsqueeze(3).contiguous()


# Decay factors are kept at or above exp(-40) (about 4e-18). The contribution changed by
# this is below float32 rounding of the state unless the state is 1e10 times smaller than
# the input that decayed.
# Without the limit, decay factors and the products of the chunked scan reach subnormal
# floats, which made a Swin-UMamba forward and backward pass several times slower on a
# 2-core CPU. A product of two factors above the limit is above 1e-35, so no subnormal
# float arises.
MIN_DECAY = math.exp(-40.0)


def _cut_small(decay: torch.Tensor) -> torch.Tensor:
    return torch.where(decay >= MIN_DECAY, decay, 0.0)


def _sequential_scan(decay: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Solve h[t] = decay[t] * h[t-1] + inputs[t] with h[-1] = 0 along the first axis, one step at a time.

    Each step is one `addcmul` into a preallocated buffer, where the prefix scan copies
    every element log2(chunk) times. On a 2-core CPU a whole scan (forward and backward)
    was 2 to 3 times faster this way than with chunks of 16, at all four stage sizes of
    Swin-UMamba (`benchmarks/selective_scan.py`).
    """
    states = torch.empty_like(inputs)
    states[0] = inputs[0]
    for t in range(1, inputs.shape[0]):
        torch.addcmul(inputs[t], decay[t], states[t - 1], out=states[t])
    return states


def _reverse_sequential_scan(decay: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Solve g[t] = grads[t] + decay[t+1] * g[t+1], backwards from the last element.

    This is the backward pass of `_sequential_scan`, written without flipped copies.
    """
    result = torch.empty_like(grads)
    result[-1] = grads[-1]
    for t in range(grads.shape[0] - 2, -1, -1):
        torch.addcmul(grads[t], decay[t + 1], result[t + 1], out=result[t])
    return result


def _prefix_scan(decay: torch.Tensor, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve the recurrence of `_sequential_scan` with log2(length) vectorized steps.

    Returns the states h and the cumulative decay factors from the first element to t,
    which carry a nonzero initial state into the chunk.
    """
    length = decay.shape[0]
    offset = 1
    while offset < length:
        # Compose each element's affine map with the one `offset` steps earlier. The first
        # `offset` elements have no predecessor at this distance and stay as they are.
        inputs = torch.cat([inputs[:offset], inputs[offset:] + decay[offset:] * inputs[:-offset]])
        decay = torch.cat([decay[:offset], _cut_small(decay[offset:] * decay[:-offset])])
        offset *= 2
    return inputs, decay


def _scan(decay: torch.Tensor, inputs: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Solve the recurrence of `_sequential_scan` in parallel inside chunks, or step by step for chunk size 1."""
    if chunk_size == 1:
        return _sequential_scan(decay, inputs)
    states = []
    state = None
    for start in range(0, decay.shape[0], chunk_size):
        chunk = slice(start, start + chunk_size)
        h, cumulative_decay = _prefix_scan(decay[chunk], inputs[chunk])
        if state is not None:
            h = h + cumulative_decay * state
        state = h[-1]
        states.append(h)
    return torch.cat(states)


class _LinearRecurrence(torch.autograd.Function):
    """`_scan` on decay factors exp(log_decay), with a hand-written backward pass.

    The gradient of a linear recurrence is the same recurrence run backwards in time:
    g[t] = dL/dh[t] + decay[t+1] * g[t+1] gives dL/dinputs[t] = g[t] and
    dL/ddecay[t] = g[t] * h[t-1]. Autograd through the
    prefix scan instead keeps every intermediate level and spent most of its time filling
    zero gradients for the shifted slices.

    log_decay is clamped at log(MIN_DECAY) before exp, so that no factor is subnormal. The
    backward pass treats the clamp as the identity: the gradient of a clamped element
    (below MIN_DECAY times the gradient of its factor) is kept instead of set to zero,
    which saves two passes over the largest tensor of the scan.
    """

    @staticmethod
    def forward(ctx, log_decay: torch.Tensor, inputs: torch.Tensor, chunk_size: int) -> torch.Tensor:
        decay = log_decay.clamp(min=math.log(MIN_DECAY)).exp_()
        states = _scan(decay, inputs, chunk_size)
        ctx.save_for_backward(decay, states)
        ctx.chunk_size = chunk_size
        return states

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        decay, states = ctx.saved_tensors
        if ctx.chunk_size == 1:
            grad_inputs = _reverse_sequential_scan(decay, grad_states)
        else:
            # decay[t+1], with no successor (decay 0) after the last element
            next_decay = torch.cat([decay[1:], torch.zeros_like(decay[:1])])
            grad_inputs = _scan(next_decay.flip(0), grad_states.flip(0), ctx.chunk_size).flip(0)
        # dL/dlog_decay[t] = dL/ddecay[t] * decay[t], with h[-1] = 0 for the first element
        grad_log_decay = torch.zeros_like(decay)
        torch.mul(grad_inputs[1:], states[:-1], out=grad_log_decay[1:])
        grad_log_decay.mul_(decay)
        return grad_log_decay, grad_inputs, None


def selective_scan_torch(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Run the selective scan in PyTorch.

    Args:
        u: input sequence, (batch, channels, length).
        delta: step sizes, (batch, channels, length).
        A: state matrix diagonal per channel, (channels, state); negative for a stable scan.
        B: input projection, (batch, groups, state, length) or (batch, state, length); the
            channels are split into `groups` consecutive blocks that share B and C.
        C: output projection, same shape as B.
        D: skip weight per channel, (channels,), or None.
        z: gate, (batch, channels, length); the output is multiplied by SiLU(z).
        delta_bias: added to delta before the optional softplus, (channels,).
        delta_softplus: apply softplus to delta.
        chunk_size: sequence elements scanned in parallel at once; 1 scans one element per
            step. The work per element grows with log2(chunk_size), the sequential steps
            with length / chunk_size. None picks 1 on a CPU and 64 elsewhere.
            NOTE: 64 is a guess for GPUs without the compiled kernel; it was never measured.

    Returns:
        y, (batch, channels, length), in the dtype of u.
    """
    dtype = u.dtype
    # Half precision is scanned in float32; float64 stays float64.
    compute = torch.promote_types(dtype, torch.float32)
    if chunk_size is None:
        chunk_size = 1 if u.device.type == "cpu" else 64
    batch, channels, length = u.shape
    B = _time_major_groups(B.to(compute))
    C = _time_major_groups(C.to(compute))
    groups, state = B.shape[2], B.shape[4]
    if channels % groups:
        raise ValueError(f"channels ({channels}) must be a multiple of the groups of B and C ({groups}).")

    u, delta = u.to(compute), delta.to(compute)
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)

    # The scan runs on (length, batch, groups, channels per group, state): time-major, so
    # that every step reads a contiguous block, with each group's channels next to its
    # B and C. Broadcasting the small time-major operands writes the large tensors
    # directly in this layout, without permuting copies of them. The operands must be
    # contiguous: elementwise results follow the memory layout of their inputs.
    grouped = (length, batch, groups, channels // groups, 1)
    delta_t = delta.permute(2, 0, 1).contiguous().reshape(grouped)
    log_decay = delta_t * A.to(compute).reshape(groups, channels // groups, state)
    inputs = (delta_t * u.permute(2, 0, 1).contiguous().reshape(grouped)) * B

    h = _LinearRecurrence.apply(log_decay, inputs, chunk_size)
    # Sum over the state axis as one batched product per (step, batch, group).
    y = (h @ C.transpose(-1, -2)).reshape(length, batch, channels).permute(1, 2, 0)

    if D is not None:
        y = y + D.to(compute)[None, :, None] * u
    if z is not None:
        y = y * F.silu(z.to(compute))
    return y.to(dtype)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """Run the selective scan with the CUDA kernel of `mamba_ssm` if available, else in PyTorch.

    Arguments and shapes are those of `selective_scan_torch`.
    """
    if _cuda_selective_scan is not None and u.is_cuda:
        return _cuda_selective_scan(
            u.contiguous(), delta.contiguous(), A.contiguous(), B.contiguous(), C.contiguous(),
            D, z, delta_bias, delta_softplus,
        )
    return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
