"""The REX learning-rate schedule."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["rex_factor", "rex_schedule"]


def rex_factor(step: int, total_steps: int) -> float:
    """REX multiplier at `step` of `total_steps`: (1 - z) / (0.5 + 0.5 (1 - z)), z = step / total.

    Chen, Wolfe and Kyrillidis, "REX: Revisiting Budgeted Training with an Improved
    Schedule", MLSys 2022. It is 1 at the start and reaches 0 at the last step.
    """
    remaining = 1.0 - min(step, total_steps) / total_steps
    return remaining / (0.5 + 0.5 * remaining)


def rex_schedule(optimizer: Optimizer, total_steps: int) -> LambdaLR:
    """Per-step REX schedule whose peak is the optimizer's own learning rate.

    A `LambdaLR` rather than pytorch-optimizer's `REXScheduler`, which takes its peak
    as a separate `max_lr` argument and keeps a step counter outside the standard
    scheduler state; this one resumes exactly from `state_dict()`.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, got {total_steps}")
    return LambdaLR(optimizer, lambda step: rex_factor(step, total_steps))
