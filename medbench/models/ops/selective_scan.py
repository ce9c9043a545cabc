"""Selective scan, the state-space recurrence of Mamba (Gu and Dao, arXiv 2312.00752).

For every channel d and state index n the scan runs the discretized linear recurrence

    h[t] = exp(delta[t] * A[d, n]) * h[t-1] + delta[t] * B[n, t] * u[t]
    y[t] = sum_n C[n, t] * h[t, n] + D[d] * u[t]

over the sequence axis, with an input-dependent step `delta`. `selective_scan` takes the
arguments of `mamba_ssm`'s `selective_scan_fn` so that the compiled CUDA kernel replaces
the PyTorch version whenever it is installed and the inputs are on a GPU.

The PyTorch version is a Hillis-Steele parallel prefix scan inside chunks of the sequence
(log2(chunk) vectorized steps), with the state carried sequentially from chunk to chunk. It
only multiplies decay factors in [0, 1], so it cannot overflow, unlike scans that divide
by cumulative products.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

__all__ = ["HAS_CUDA_KERNEL", "selective_scan", "selective_scan_torch"]

log = logging.getLogger(__name__)

try:  # the compiled kernel of the mamba-ssm package, when it is installed
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _cuda_selective_scan
except ImportError:
    _cuda_selective_scan = None

HAS_CUDA_KERNEL = _cuda_selective_scan is not None


def _expand_groups(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Broadcast B or C of shape (batch, groups, state, length) to (batch, channels, state, length)."""
    if x.dim() == 3:  # (batch, state, length): one group shared by all channels
        x = x.unsqueeze(1)
    batch, groups, state, length = x.shape
    if channels % groups:
        raise ValueError(f"channels ({channels}) must be a multiple of the groups of B and C ({groups}).")
    x = x.unsqueeze(2).expand(batch, groups, channels // groups, state, length)
    return x.reshape(batch, channels, state, length)


# Decay factors below exp(-40) (about 4e-18) are set to zero. The contribution dropped is
# below float32 rounding of the state unless the state is 1e10 times smaller than the
# input that decayed.
# Without the cut, products of decay factors reach subnormal floats, which made a
# Swin-UMamba forward and backward pass several times slower on a 2-core CPU. A product
# of two factors above the cut is above 1e-35, so no subnormal float arises.
MIN_DECAY = math.exp(-40.0)


def _cut_small(decay: torch.Tensor) -> torch.Tensor:
    return torch.where(decay >= MIN_DECAY, decay, 0.0)


def _prefix_scan(decay: torch.Tensor, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve h[t] = decay[t] * h[t-1] + inputs[t] with h[-1] = 0 along the first axis.

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


def _chunked_scan(decay: torch.Tensor, inputs: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Solve the recurrence of `_prefix_scan` chunk by chunk, carrying the state between chunks."""
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
    """`_chunked_scan` with a hand-written backward pass.

    The gradient of a linear recurrence is the same recurrence run backwards in time:
    g[t] = dL/dh[t] + decay[t+1] * g[t+1] gives dL/dinputs[t] = g[t] and
    dL/ddecay[t] = g[t] * h[t-1]. Autograd through the
    prefix scan instead keeps every intermediate level and spent most of its time filling
    zero gradients for the shifted slices.
    """

    @staticmethod
    def forward(ctx, decay: torch.Tensor, inputs: torch.Tensor, chunk_size: int) -> torch.Tensor:
        states = _chunked_scan(decay, inputs, chunk_size)
        ctx.save_for_backward(decay, states)
        ctx.chunk_size = chunk_size
        return states

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        decay, states = ctx.saved_tensors
        # decay[t+1], with no successor (decay 0) after the last element
        next_decay = torch.cat([decay[1:], torch.zeros_like(decay[:1])])
        grad_inputs = _chunked_scan(next_decay.flip(0), grad_states.flip(0), ctx.chunk_size).flip(0)
        previous_states = torch.cat([torch.zeros_like(states[:1]), states[:-1]])
        return grad_inputs * previous_states, grad_inputs, None


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
    chunk_size: int = 16,
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
        chunk_size: sequence elements scanned in parallel at once. The work per element
            grows with log2(chunk_size), the sequential steps with length / chunk_size.
            16 was the fastest of 8 to 64 for VMamba-Tiny sizes on a 2-core CPU, measured
            before the scan had its own backward pass.

    Returns:
        y, (batch, channels, length), in the dtype of u.
    """
    dtype = u.dtype
    # Half precision is scanned in float32; float64 stays float64.
    compute = torch.promote_types(dtype, torch.float32)
    channels = u.shape[1]
    u, delta = u.to(compute), delta.to(compute)
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    B = _expand_groups(B.to(compute), channels)
    C = _expand_groups(C.to(compute), channels)

    # Time-major (length, batch, channels, state), so that chunks and shifts along time
    # are contiguous blocks of memory.
    time_major = (3, 0, 1, 2)
    log_decay = (delta.unsqueeze(2) * A.to(compute)[None, :, :, None]).permute(time_major)
    # exp of the clamped argument is never subnormal, and the cut then zeroes the smallest.
    decay = _cut_small(torch.exp(log_decay.clamp(min=math.log(MIN_DECAY)))).contiguous()
    inputs = ((delta * u).unsqueeze(2) * B).permute(time_major).contiguous()
    C = C.permute(time_major)

    h = _LinearRecurrence.apply(decay, inputs, chunk_size)
    y = (h * C).sum(dim=-1).permute(1, 2, 0)  # (batch, channels, length)

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
