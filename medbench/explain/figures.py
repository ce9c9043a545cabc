"""Grad-CAM figures: image, ground truth, prediction and one CAM overlay per class."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from medbench.visualize import label_cmap  # noqa: E402

__all__ = ["ExplainedSample", "save_grid", "save_sample"]

# Opacity of the CAM over the image, and the colour map of the CAM.
CAM_ALPHA = 0.5
CAM_CMAP = "jet"
PANEL_INCHES = 2.6
DPI = 90


@dataclass(frozen=True)
class ExplainedSample:
    """One explained image.

    Attributes:
        id: sample id of the prepared dataset.
        group: `worst` (lowest Dice) or `random`.
        dice: Dice of the prediction over all foreground classes (NaN when undefined).
        image: (H, W, 3) uint8 image.
        target: (H, W) ground-truth labels.
        prediction: (H, W) predicted labels.
        cams: foreground class index -> (H, W) map in [0, 1].
    """

    id: str
    group: str
    dice: float
    image: np.ndarray
    target: np.ndarray
    prediction: np.ndarray
    cams: dict[int, np.ndarray]

    @property
    def title(self) -> str:
        return f"{self.id}\n{self.group}, Dice {self.dice:.3f}"


def _draw(figure, axes, sample: ExplainedSample, class_names: list[str]) -> None:
    cmap = label_cmap(len(class_names))
    axes[0].imshow(sample.image)
    axes[0].set_title(sample.title, fontsize=8)
    for axis, labels, title in ((axes[1], sample.target, "ground truth"), (axes[2], sample.prediction, "prediction")):
        axis.imshow(labels, cmap=cmap, vmin=0, vmax=len(class_names) - 1, interpolation="nearest")
        axis.set_title(title, fontsize=8)
    for axis, (class_index, cam) in zip(axes[3:], sample.cams.items()):
        axis.imshow(sample.image)
        overlay = axis.imshow(cam, cmap=CAM_CMAP, vmin=0.0, vmax=1.0, alpha=CAM_ALPHA)
        axis.contour(sample.target == class_index, levels=[0.5], colors="white", linewidths=0.8)
        axis.set_title(f"CAM {class_names[class_index]} (GT outlined)", fontsize=8)
        figure.colorbar(overlay, ax=axis, fraction=0.046, pad=0.02)
    for axis in axes:
        axis.axis("off")


def save_sample(path: Path, sample: ExplainedSample, class_names: list[str]) -> Path:
    """Save one sample as a row of panels: image, ground truth, prediction, one CAM per class."""
    columns = 3 + len(sample.cams)
    figure, axes = plt.subplots(1, columns, figsize=(PANEL_INCHES * columns, PANEL_INCHES), squeeze=False)
    _draw(figure, axes[0], sample, class_names)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path


def save_grid(path: Path, samples: list[ExplainedSample], class_names: list[str]) -> Path:
    """Save all samples, one row each, in one figure."""
    columns = 3 + max(len(s.cams) for s in samples)
    figure, axes = plt.subplots(
        len(samples), columns, figsize=(PANEL_INCHES * columns, PANEL_INCHES * len(samples)), squeeze=False
    )
    for row, sample in zip(axes, samples):
        _draw(figure, row, sample, class_names)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path
