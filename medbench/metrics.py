"""Segmentation metrics as pure functions on label arrays.

Confusion counts come first; every score derives from them. The empty-mask rules are
the same everywhere in medbench:

- Overlap scores (Dice, IoU, precision, recall) of a class are undefined (NaN) when their
  denominator is zero, for example Dice when the class is absent from both prediction and
  ground truth. Such cases are excluded from averages and counted, never replaced by 0 or 1.
- HD95 of a class is NaN (excluded and counted) when both masks are empty, and a
  worst-case value, the image diagonal in spacing units, when exactly one of them is
  empty (counted too).

Pooled ("micro") scores sum the counts of all images and all foreground classes of an
evaluation set before dividing, as the reference study's mDSC does; background (class 0)
is excluded.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import spatial

__all__ = [
    "HD95Result",
    "confusion_counts",
    "dice",
    "hd95",
    "hd95_per_class",
    "iou",
    "precision",
    "recall",
    "pooled_scores",
]

SCORE_NAMES = ("dice", "iou", "precision", "recall")


def _validate_labels(prediction: np.ndarray, target: np.ndarray, num_classes: int) -> None:
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction shape {prediction.shape} differs from target shape {target.shape}; "
            "resize the prediction to the mask's size first."
        )
    for name, array in (("prediction", prediction), ("target", target)):
        if not np.issubdtype(array.dtype, np.integer) and array.dtype != bool:
            raise ValueError(f"{name} must hold integer class labels, got dtype {array.dtype}; take argmax of logits.")
        if array.size and (array.min() < 0 or array.max() >= num_classes):
            raise ValueError(
                f"{name} contains labels {int(array.min())}..{int(array.max())}, outside 0..{num_classes - 1}."
            )


def confusion_counts(prediction: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """Count true positives, false positives, false negatives and true negatives per class.

    Args:
        prediction: integer label map of any shape, values in `[0, num_classes)`.
        target: ground-truth label map of the same shape.
        num_classes: number of classes K, background included.

    Returns:
        int64 array of shape (K, 4): columns TP, FP, FN, TN for each class.
    """
    prediction = np.asarray(prediction)
    target = np.asarray(target)
    _validate_labels(prediction, target, num_classes)
    flat = target.astype(np.int64).ravel() * num_classes + prediction.astype(np.int64).ravel()
    matrix = np.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)
    tp = np.diag(matrix)
    fp = matrix.sum(axis=0) - tp
    fn = matrix.sum(axis=1) - tp
    tn = matrix.sum() - tp - fp - fn
    return np.stack([tp, fp, fn, tn], axis=1).astype(np.int64)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def dice(counts: np.ndarray) -> np.ndarray:
    """Dice 2TP / (2TP + FP + FN) per row of `counts` (..., 4); NaN when both masks are empty."""
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    return _ratio(2 * tp, 2 * tp + fp + fn)


def iou(counts: np.ndarray) -> np.ndarray:
    """IoU TP / (TP + FP + FN) per row of `counts` (..., 4); NaN when both masks are empty."""
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    return _ratio(tp, tp + fp + fn)


def precision(counts: np.ndarray) -> np.ndarray:
    """Precision TP / (TP + FP); NaN when nothing is predicted for the class."""
    return _ratio(counts[..., 0], counts[..., 0] + counts[..., 1])


def recall(counts: np.ndarray) -> np.ndarray:
    """Recall TP / (TP + FN); NaN when the class is absent from the ground truth."""
    return _ratio(counts[..., 0], counts[..., 0] + counts[..., 2])


SCORES = {"dice": dice, "iou": iou, "precision": precision, "recall": recall}


def pooled_scores(counts: np.ndarray) -> dict[str, float]:
    """Micro-averaged scores over an evaluation set, background excluded.

    Args:
        counts: (N, K, 4) per-image confusion counts, or (K, 4) already summed.

    Returns:
        `dice`, `iou`, `precision`, `recall` of all foreground pixels pooled, and
        `dice/<k>` ... per foreground class index k (pooled over images). A score whose
        denominator is zero over the whole set is NaN.
    """
    counts = np.asarray(counts, dtype=np.int64)
    per_class = counts.sum(axis=0) if counts.ndim == 3 else counts
    foreground = per_class[1:].sum(axis=0)
    result = {name: float(score(foreground)) for name, score in SCORES.items()}
    for k in range(1, per_class.shape[0]):
        for name in ("dice", "iou"):
            result[f"{name}/{k}"] = float(SCORES[name](per_class[k]))
    return result


@dataclass(frozen=True)
class HD95Result:
    """HD95 of one mask pair and which empty-mask rule applied (`ok`, `both_empty`, `one_empty`)."""

    value: float
    status: str


def _surface(mask: np.ndarray) -> np.ndarray:
    """Pixels of `mask` with a 4-connected neighbour outside it or outside the array.

    Equal to `mask & ~scipy.ndimage.binary_erosion(mask)` (cross structure, border value
    0), written as four shifted comparisons because that runs several times faster than
    SciPy's general-structure erosion on the crops that `hd95` passes.
    """
    padded = np.pad(mask, 1)
    interior = (
        padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    )
    return mask & ~interior


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def hd95(
    prediction: np.ndarray,
    target: np.ndarray,
    spacing: Sequence[float] | None = None,
    worst_case: float | None = None,
) -> HD95Result:
    """95th-percentile Hausdorff distance between the surfaces of two binary masks.

    The definition is MONAI's (`compute_hausdorff_distance(percentile=95)`): surfaces are
    mask pixels removed by a binary erosion with 4-connectivity; for each surface pixel of
    one mask the Euclidean distance to the nearest surface pixel of the other is taken;
    the result is the larger of the two directed 95th percentiles (linear interpolation).

    Empty-mask rule: both masks empty gives NaN with status `both_empty` (exclude and count
    it); exactly one empty gives `worst_case` with status `one_empty`. `worst_case`
    defaults to the image diagonal in spacing units.

    Args:
        prediction: 2-D boolean (or 0/1) mask.
        target: ground-truth mask of the same shape.
        spacing: pixel size per axis (row, column); unit spacing when `None`.
        worst_case: value for the one-empty case.
    """
    prediction = np.asarray(prediction, dtype=bool)
    target = np.asarray(target, dtype=bool)
    if prediction.shape != target.shape or prediction.ndim != 2:
        raise ValueError(
            f"hd95 needs two 2-D masks of one shape, got {prediction.shape} and {target.shape}."
        )
    sampling = np.ones(2) if spacing is None else np.asarray(spacing, dtype=np.float64)
    if worst_case is None:
        worst_case = float(math.hypot(*(np.asarray(prediction.shape) * sampling)))
    has_prediction, has_target = prediction.any(), target.any()
    if not has_prediction and not has_target:
        return HD95Result(float("nan"), "both_empty")
    if not has_prediction or not has_target:
        return HD95Result(float(worst_case), "one_empty")

    # Surfaces only depend on the pixels of each mask and the array border, so each mask is
    # cropped to its own bounding box, grown by one pixel where that stays inside the image
    # (the border rule stays unchanged). Nearest-surface distances come from a k-d tree
    # over the surface pixel coordinates; they equal the Euclidean distance transform of
    # the other surface sampled at these pixels, at a fraction of the cost.
    surface_p, surface_t = (_surface_in_image(mask) for mask in (prediction, target))
    shared = surface_p & surface_t  # distance 0 in both directions, no search needed
    only_p, only_t = _coordinates(surface_p & ~shared, sampling), _coordinates(surface_t & ~shared, sampling)
    all_p, all_t = _coordinates(surface_p, sampling), _coordinates(surface_t, sampling)
    zeros = np.zeros(int(shared.sum()))
    to_target = np.concatenate([zeros, _nearest_distances(only_p, all_t)])
    to_prediction = np.concatenate([zeros, _nearest_distances(only_t, all_p)])
    value = max(np.percentile(to_target, 95), np.percentile(to_prediction, 95))
    return HD95Result(float(value), "ok")


def _surface_in_image(mask: np.ndarray) -> np.ndarray:
    surface = np.zeros_like(mask)
    rows, cols = _bounding_box(mask)
    rows = slice(max(rows.start - 1, 0), rows.stop + 1)
    cols = slice(max(cols.start - 1, 0), cols.stop + 1)
    surface[rows, cols] = _surface(mask[rows, cols])
    return surface


def _coordinates(mask: np.ndarray, sampling: np.ndarray) -> np.ndarray:
    rows, cols = np.divmod(np.flatnonzero(mask), mask.shape[1])
    return np.stack([rows * sampling[0], cols * sampling[1]], axis=1)


def _nearest_distances(points: np.ndarray, surface: np.ndarray) -> np.ndarray:
    if not len(points):
        return np.zeros(0)
    tree = spatial.cKDTree(surface, balanced_tree=False, compact_nodes=False)  # faster to build
    return tree.query(points)[0]


def hd95_per_class(
    prediction: np.ndarray,
    target: np.ndarray,
    num_classes: int,
    spacing: Sequence[float] | None = None,
) -> list[HD95Result]:
    """HD95 of each foreground class 1..K-1 of two label maps, with the rule of `hd95`."""
    prediction = np.asarray(prediction)
    target = np.asarray(target)
    _validate_labels(prediction, target, num_classes)
    return [hd95(prediction == k, target == k, spacing) for k in range(1, num_classes)]


def nan_mean(values: Iterable[float]) -> tuple[float, int]:
    """Mean of the finite values and the number of NaN values left out."""
    array = np.asarray(list(values), dtype=np.float64)
    finite = array[~np.isnan(array)]
    return (float(finite.mean()) if finite.size else float("nan")), int(np.isnan(array).sum())
