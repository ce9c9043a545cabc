"""Metric tests with hand-computed cases, the empty-mask rules, and a MONAI cross-check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medbench.metrics import (
    confusion_counts,
    dice,
    hd95,
    hd95_per_class,
    iou,
    pooled_scores,
    precision,
    recall,
)


def test_confusion_counts_hand_computed():
    target = np.array([[0, 1, 1], [2, 2, 0]])
    prediction = np.array([[0, 1, 0], [2, 1, 1]])
    counts = confusion_counts(prediction, target, 3)
    # class 1: TP (0,1); FP (1,1),(1,2); FN (0,2); TN the other two pixels
    assert counts[1].tolist() == [1, 2, 1, 2]
    # class 2: TP (1,0); FP none; FN (1,1); TN four
    assert counts[2].tolist() == [1, 0, 1, 4]
    assert counts[0].tolist() == [1, 1, 1, 3]


def test_scores_hand_computed():
    counts = np.array([3, 1, 2, 10])  # TP, FP, FN, TN
    assert dice(counts) == pytest.approx(6 / 9)
    assert iou(counts) == pytest.approx(3 / 6)
    assert precision(counts) == pytest.approx(3 / 4)
    assert recall(counts) == pytest.approx(3 / 5)


def test_scores_empty_masks_are_nan():
    both_empty = np.array([0, 0, 0, 16])
    assert math.isnan(dice(both_empty))
    assert math.isnan(iou(both_empty))
    missed = np.array([0, 0, 4, 12])
    assert dice(missed) == 0.0
    assert math.isnan(precision(missed))
    assert recall(missed) == 0.0


def test_pooled_scores_sum_before_dividing():
    # Two images: image A perfect (4 TP), image B all wrong (0 TP, 4 FN).
    a = confusion_counts(np.array([[1, 1], [1, 1]]), np.array([[1, 1], [1, 1]]), 2)
    b = confusion_counts(np.zeros((2, 2), int), np.ones((2, 2), int), 2)
    scores = pooled_scores(np.stack([a, b]))
    assert scores["dice"] == pytest.approx(8 / 12)  # micro: 2*4 / (2*4 + 0 + 4)
    assert scores["recall"] == pytest.approx(0.5)
    assert scores["dice/1"] == scores["dice"]


def test_pooled_scores_exclude_background_and_pool_classes():
    target = np.array([[1, 1, 2, 2]])
    prediction = np.array([[1, 0, 2, 2]])
    scores = pooled_scores(confusion_counts(prediction, target, 3))
    assert scores["dice"] == pytest.approx(2 * 3 / (2 * 3 + 0 + 1))
    assert scores["dice/1"] == pytest.approx(2 / 3)
    assert scores["dice/2"] == pytest.approx(1.0)


def test_confusion_counts_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        confusion_counts(np.zeros((2, 2), int), np.zeros((3, 2), int), 2)
    with pytest.raises(ValueError, match="outside 0..1"):
        confusion_counts(np.full((2, 2), 2), np.zeros((2, 2), int), 2)
    with pytest.raises(ValueError, match="argmax"):
        confusion_counts(np.zeros((2, 2)), np.zeros((2, 2), int), 2)


def test_hd95_hand_computed_shifted_square():
    target = np.zeros((20, 20), bool)
    target[5:10, 5:10] = True
    prediction = np.roll(target, 3, axis=1)  # shifted 3 pixels right
    # Surfaces: every boundary pixel of the 5x5 squares. Most boundary pixels of one
    # square lie 3 pixels from the other's; the left edge (x=5) of the target is 3 from
    # x=8. The maximum over all is 3, and the 95th percentile stays 3.
    result = hd95(prediction, target)
    assert result.status == "ok"
    assert result.value == pytest.approx(3.0)


def test_hd95_identical_masks_zero():
    mask = np.zeros((16, 16), bool)
    mask[4:9, 2:12] = True
    assert hd95(mask, mask).value == 0.0


def test_hd95_both_empty_is_nan_and_counted():
    result = hd95(np.zeros((8, 8), bool), np.zeros((8, 8), bool))
    assert math.isnan(result.value)
    assert result.status == "both_empty"


def test_hd95_one_empty_is_diagonal():
    target = np.zeros((30, 40), bool)
    target[3:6, 3:6] = True
    result = hd95(np.zeros_like(target), target)
    assert result.status == "one_empty"
    assert result.value == pytest.approx(50.0)
    assert hd95(np.zeros_like(target), target, spacing=(2.0, 2.0)).value == pytest.approx(100.0)


def test_hd95_per_class_labels():
    target = np.zeros((10, 10), int)
    target[2:5, 2:5] = 1
    prediction = target.copy()
    results = hd95_per_class(prediction, target, 3)
    assert [r.status for r in results] == ["ok", "both_empty"]


@pytest.mark.parametrize("seed", range(8))
def test_hd95_matches_monai(seed):
    from monai.metrics import compute_hausdorff_distance

    rng = np.random.default_rng(seed)
    shape = (64, 48)
    masks = []
    for _ in range(2):
        mask = np.zeros(shape, bool)
        for _ in range(rng.integers(1, 4)):
            r, c = rng.integers(0, shape[0] - 8), rng.integers(0, shape[1] - 8)
            h, w = rng.integers(3, 20, size=2)
            mask[r : r + h, c : c + w] = True
        mask ^= rng.random(shape) < 0.02  # ragged edges and isolated pixels
        masks.append(mask)
    prediction, target = masks
    ours = hd95(prediction, target).value
    one_hot = lambda m: torch.from_numpy(np.stack([~m, m])[None].astype(np.float32))  # noqa: E731
    reference = compute_hausdorff_distance(one_hot(prediction), one_hot(target), percentile=95)
    assert ours == pytest.approx(float(reference[0, 0]), rel=1e-6)
