"""The dataset card of a prepared dataset: its facts as JSON and sample overlays as a PNG."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

__all__ = ["CARD_JSON", "CARD_PNG", "dataset_card", "save_overlays", "write_dataset_card"]

CARD_JSON = "dataset_card.json"
CARD_PNG = "dataset_card.png"
# Samples drawn in the overlay PNG, and the opacity of the class colours over the image.
OVERLAY_SAMPLES = 8
OVERLAY_ALPHA = 0.45


def _size_summary(sizes: list[tuple[int, int]]) -> dict:
    heights = np.array([h for h, _ in sizes])
    widths = np.array([w for _, w in sizes])
    common = Counter(f"{w}x{h}" for h, w in sizes).most_common(5)
    return {
        "distinct_sizes": len(set(sizes)),
        "most_common": [{"size": size, "images": n} for size, n in common],
        "width": {"min": int(widths.min()), "median": float(np.median(widths)), "max": int(widths.max())},
        "height": {"min": int(heights.min()), "median": float(np.median(heights)), "max": int(heights.max())},
    }


def dataset_card(manifest: dict, splits: dict) -> dict:
    """Summarize a prepared dataset: counts, original sizes, class shares, duplicates and splits.

    Sizes are width x height of the source files; class pixel shares and images per class
    are counted on the masks at the working size.
    """
    names = manifest["class_names"]
    samples = manifest["samples"]
    ambiguous = np.array([s["ambiguous_share"] for s in samples], dtype=np.float64)
    duplicates = manifest["duplicates"]
    return {
        "dataset": manifest["dataset"],
        "source_folder": manifest["source_folder"],
        "class_names": names,
        "image_size": manifest["settings"]["image_size"],
        "augmentation": manifest["augmentation"],
        "counts": {
            "source_images": manifest["source_images"],
            "duplicates_removed": len(duplicates),
            "identical_bytes": sum(d["reason"] == "identical bytes" for d in duplicates),
            "perceptual_hash": sum(d["reason"] == "perceptual hash" for d in duplicates),
            "prepared_images": manifest["num_images"],
            "groups": len({s["group"] for s in samples}),
            "test_images": len(splits.get("test", [])),
        },
        "original_sizes": _size_summary([tuple(s["original_size"]) for s in samples]),
        "class_pixel_share": dict(zip(names, manifest["class_pixel_share"])),
        "images_with_class": dict(zip(names, manifest["images_with_class"])),
        "ambiguous_mask_pixels": {
            "mean_share": float(ambiguous.mean()) if ambiguous.size else 0.0,
            "max_share": float(ambiguous.max()) if ambiguous.size else 0.0,
            "images_with_any": int((ambiguous > 0).sum()),
        },
        "near_duplicate_distance": manifest["settings"]["near_duplicate_distance"],
        "duplicates": duplicates,
        "splits": {
            "mode": splits["mode"],
            "grouping": splits["grouping"],
            "seed": splits["seed"],
            "folds": [
                {"fold": f["fold"], "train": len(f["train"]), "val": len(f["val"]), "inner_val": len(f["inner_val"])}
                for f in splits["folds"]
            ],
        },
    }


def _overlay_choice(masks: np.ndarray, num_classes: int, count: int) -> list[int]:
    """Pick up to `count` indices: the first image holding each foreground class, then the first ones."""
    chosen: list[int] = []
    for label in range(1, num_classes):
        holding = next((i for i in range(len(masks)) if (masks[i] == label).any()), None)
        if holding is not None and holding not in chosen:
            chosen.append(holding)
    chosen.extend(i for i in range(len(masks)) if i not in chosen)
    return chosen[:count]


def save_overlays(path: Path, images: np.ndarray, masks: np.ndarray, ids: list[str], class_names: list[str]) -> Path:
    """Save a grid of images (N, S, S, 3) with their masks (N, S, S) drawn over them in class colours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from medbench.visualize import CLASS_COLOURS

    chosen = _overlay_choice(masks, len(class_names), OVERLAY_SAMPLES)
    colours = np.array([CLASS_COLOURS[k % len(CLASS_COLOURS)] for k in range(len(class_names))])
    columns = min(4, len(chosen))
    rows = -(-len(chosen) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows + 0.4), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, index in zip(axes.ravel(), chosen):
        image = np.asarray(images[index], dtype=np.float64) / 255.0
        mask = np.asarray(masks[index])
        overlay = np.where((mask > 0)[..., None], (1 - OVERLAY_ALPHA) * image + OVERLAY_ALPHA * colours[mask], image)
        axis.imshow(overlay)
        axis.set_title(ids[index][:24], fontsize=7)
    handles = [Patch(color=colours[k], label=name) for k, name in enumerate(class_names) if k > 0]
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8)
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def write_dataset_card(folder: Path, manifest: dict, splits: dict) -> dict:
    """Write `dataset_card.json` and `dataset_card.png` into a prepared folder; return the card."""
    card = dataset_card(manifest, splits)
    (folder / CARD_JSON).write_text(json.dumps(card, indent=1))
    images = np.load(folder / "images.npy", mmap_mode="r")
    masks = np.load(folder / "masks.npy", mmap_mode="r")
    save_overlays(folder / CARD_PNG, images, masks, [s["id"] for s in manifest["samples"]], manifest["class_names"])
    return card
