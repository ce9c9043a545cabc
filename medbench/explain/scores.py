"""Scores of a class activation map against a ground-truth mask.

Both scores follow medbench's empty-mask rule: a score whose denominator is zero is NaN,
to be excluded from means and counted, never replaced by 0 or 1.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["cam_iou", "energy_pointing", "otsu_mask"]

# Otsu's method runs on the map quantized to 8 bits, as OpenCV implements it.
OTSU_LEVELS = 255


def otsu_mask(cam: np.ndarray) -> np.ndarray:
    """Threshold a map with values in [0, 1] by Otsu's method; returns a boolean (H, W) mask.

    A constant map has no threshold that separates two classes and gives an empty mask.
    """
    quantized = np.round(np.clip(cam, 0.0, 1.0) * OTSU_LEVELS).astype(np.uint8)
    if quantized.min() == quantized.max():
        return np.zeros(cam.shape, dtype=bool)
    _, binary = cv2.threshold(quantized, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return binary.astype(bool)


def cam_iou(cam: np.ndarray, target: np.ndarray) -> float:
    """Compute the IoU of the Otsu-thresholded map and the ground-truth mask `target` (H, W).

    NaN when both the thresholded map and `target` are empty.
    """
    predicted, target = otsu_mask(cam), np.asarray(target, dtype=bool)
    union = np.logical_or(predicted, target).sum()
    return float(np.logical_and(predicted, target).sum() / union) if union else float("nan")


def energy_pointing(cam: np.ndarray, target: np.ndarray) -> float:
    """Compute the energy-based pointing game, the share of the map's total value inside `target`.

    The score of a uniform map is the mask's area share. NaN when the map sums to zero or
    the mask is empty (no ground truth to point at).
    """
    target = np.asarray(target, dtype=bool)
    total = float(np.asarray(cam, dtype=np.float64).sum())
    if total <= 0 or not target.any():
        return float("nan")
    return float(np.asarray(cam, dtype=np.float64)[target].sum() / total)
