"""Figures: predictions beside the ground truth."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

__all__ = ["CLASS_COLOURS", "label_cmap", "save_prediction_grid"]

# Background transparent-black, then distinct colours per foreground class.
CLASS_COLOURS = np.array(
    [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180]],
    dtype=np.float64,
) / 255.0


def label_cmap(num_classes: int) -> ListedColormap:
    """Colour map of label maps: background black, then one colour per foreground class."""
    colours = [CLASS_COLOURS[k % len(CLASS_COLOURS)] for k in range(num_classes)]
    return ListedColormap(colours)


def save_prediction_grid(
    path: Path,
    images: list[np.ndarray],
    targets: list[np.ndarray],
    predictions: list[np.ndarray],
    titles: list[str],
    class_names: list[str],
) -> Path:
    """Save one row per sample: image, ground truth, prediction (label maps coloured per class)."""
    rows = len(images)
    figure, axes = plt.subplots(rows, 3, figsize=(9, 3 * rows), squeeze=False)
    cmap = label_cmap(len(class_names))
    for row in range(rows):
        panels = [(images[row], None, titles[row]), (targets[row], cmap, "ground truth"), (predictions[row], cmap, "prediction")]
        for column, (data, colours, title) in enumerate(panels):
            axis = axes[row, column]
            if colours is None:
                axis.imshow(data)
            else:
                axis.imshow(data, cmap=colours, vmin=0, vmax=len(class_names) - 1, interpolation="nearest")
            axis.set_title(title, fontsize=8)
            axis.axis("off")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path
