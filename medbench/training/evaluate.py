"""Evaluate a model on a data loader: confusion counts per image, pooled scores, HD95."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from medbench import metrics
from medbench.metrics import nan_mean

__all__ = ["Evaluation", "autocast", "evaluate"]


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on CUDA when `enabled`; a no-op on the CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class Evaluation:
    """Results of one pass over an evaluation set.

    Attributes:
        indices: dataset indices of the evaluated images, in loader order.
        counts: (N, K, 4) confusion counts per image (TP, FP, FN, TN per class).
        loss: mean loss over batches.
        predictions: (N, H, W) uint8 predicted label maps.
        hd95: (N, K-1) HD95 per image and foreground class, if computed.
        hd95_status: (N, K-1) empty-mask rule applied: `ok`, `both_empty`, `one_empty`.
    """

    indices: list[int]
    counts: np.ndarray
    loss: float
    predictions: np.ndarray
    hd95: np.ndarray | None = None
    hd95_status: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        """Pooled scores keyed `dice`, `dice/<class>`, ... plus `loss` and HD95 aggregates.

        HD95 aggregates: `hd95` (mean over images and classes of the finite values, the
        one-empty worst case included), `hd95/<class>`, `hd95_excluded` (both masks empty)
        and `hd95_worst_case` (exactly one empty).
        """
        pooled = metrics.pooled_scores(self.counts)
        result = {"loss": self.loss}
        for key, value in pooled.items():
            name, _, class_index = key.partition("/")
            result[f"{name}/{self.class_names[int(class_index)]}" if class_index else name] = value
        if self.hd95 is not None:
            result["hd95"], _ = nan_mean(self.hd95.ravel())
            for k, class_name in enumerate(self.class_names[1:]):
                result[f"hd95/{class_name}"], _ = nan_mean(self.hd95[:, k])
            result["hd95_excluded"] = float((self.hd95_status == "both_empty").sum())
            result["hd95_worst_case"] = float((self.hd95_status == "one_empty").sum())
        return result

    def per_image(self, ids: list[str]) -> list[dict[str, object]]:
        """One row per image: id, scores over foreground pooled per image, per-class Dice and HD95."""
        foreground = self.counts[:, 1:].sum(axis=1)  # (N, 4)
        rows = []
        for row, index in enumerate(self.indices):
            record: dict[str, object] = {"id": ids[index]}
            for name, score in metrics.SCORES.items():
                record[name] = float(score(foreground[row]))
            for k, class_name in enumerate(self.class_names[1:], start=1):
                record[f"dice/{class_name}"] = float(metrics.dice(self.counts[row, k]))
                if self.hd95 is not None:
                    record[f"hd95/{class_name}"] = float(self.hd95[row, k - 1])
                    record[f"hd95_status/{class_name}"] = str(self.hd95_status[row, k - 1])
            rows.append(record)
        return rows


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    num_classes: int,
    class_names: list[str],
    device: torch.device,
    loss_fn: nn.Module,
    amp: bool = False,
    with_hd95: bool = False,
) -> Evaluation:
    """Predict every batch of `loader` and collect per-image confusion counts (and HD95)."""
    model.eval()
    indices, counts, predictions, losses = [], [], [], []
    for images, masks, batch_indices in loader:
        images, masks = images.to(device), masks.to(device)
        with autocast(device, amp):
            logits = model(images)
        losses.append(loss_fn(logits, masks).item())
        predicted = logits.argmax(dim=1).to(torch.uint8).cpu().numpy()
        targets = masks.cpu().numpy()
        for prediction, target in zip(predicted, targets):
            counts.append(metrics.confusion_counts(prediction, target, num_classes))
        predictions.append(predicted)
        indices.extend(int(i) for i in batch_indices)
    evaluation = Evaluation(
        indices=indices,
        counts=np.stack(counts),
        loss=float(np.mean(losses)),
        predictions=np.concatenate(predictions),
        class_names=list(class_names),
    )
    if with_hd95:
        targets = loader.dataset.prepared.masks
        results = [
            metrics.hd95_per_class(prediction, np.asarray(targets[index]), num_classes)
            for prediction, index in zip(evaluation.predictions, indices)
        ]
        evaluation.hd95 = np.array([[r.value for r in row] for row in results], dtype=np.float64)
        evaluation.hd95_status = np.array([[r.status for r in row] for row in results])
    return evaluation
