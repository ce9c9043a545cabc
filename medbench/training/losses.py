"""Training losses: binary cross-entropy for 2-class tasks, cross-entropy otherwise."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SegmentationLoss"]


class SegmentationLoss(nn.Module):
    """The study's loss choice for K-channel logits (B, K, H, W) and labels (B, H, W).

    K = 2: binary cross-entropy of the foreground channel minus the background channel,
    which is the sigmoid form of a 2-way softmax, so the prediction stays the argmax.
    K > 2: multi-class cross-entropy.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.num_classes == 2:
            margin = logits[:, 1] - logits[:, 0]
            return F.binary_cross_entropy_with_logits(margin, target.float())
        return F.cross_entropy(logits, target)
