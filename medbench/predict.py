"""Segment a folder of images with a registered model, using the preprocessing recorded with it."""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from medbench import tracking
from medbench.data import NORMALIZATION
from medbench.data.imageio import read_image
from medbench.errors import MedbenchError
from medbench.visualize import CLASS_COLOURS

__all__ = ["IMAGE_SUFFIXES", "PredictResult", "Preprocessing", "predict"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
# Opacity of the class colours drawn over the image in overlay PNGs.
OVERLAY_ALPHA = 0.45
AREAS_CSV = "class_areas.csv"


@dataclass(frozen=True)
class Preprocessing:
    """Preprocessing of the model's training run: square resize to `image_size`, then normalization."""

    image_size: int
    class_names: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True)
class PredictResult:
    """Files written by `predict` and the inputs it skipped.

    Attributes:
        masks: label-map PNGs, one per segmented image, pixel value = class index.
        overlays: overlay PNGs, the class colours drawn over the image.
        areas_csv: CSV with one row per image: size and pixel count and fraction per class.
        skipped: input file name to the reason it was skipped.
    """

    masks: list[Path]
    overlays: list[Path]
    areas_csv: Path
    skipped: dict[str, str]


def recorded_preprocessing(uri: str) -> Preprocessing:
    """Read the image size, class names and normalization stored with the model (metadata, else run params)."""
    version = tracking.resolve_registered_model(uri)
    metadata = tracking.model_metadata(uri)
    params = tracking.get_run(version.run_id).data.params if version.run_id else {}
    size = metadata.get("image_size") or params.get("config.image_size")
    names = metadata.get("class_names") or [n for n in params.get("class_names", "").split(",") if n]
    if not size or not names:
        raise MedbenchError(
            f"Model {uri!r} has no recorded image size or class names (model metadata or the params of run "
            f"{version.run_id}); register it with `medbench train`, which records both."
        )
    normalization = metadata.get("normalization") or NORMALIZATION
    return Preprocessing(int(size), list(names), tuple(normalization["mean"]), tuple(normalization["std"]))


def _to_batch(image: np.ndarray, pre: Preprocessing) -> torch.Tensor:
    # Bilinear resize to the working size, as dataset preparation does for training images.
    resized = np.asarray(Image.fromarray(image).resize((pre.image_size, pre.image_size), Image.Resampling.BILINEAR))
    scaled = (resized.astype(np.float32) / 255.0 - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(scaled.transpose(2, 0, 1)))[None]


def _overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    colours = (CLASS_COLOURS[labels % len(CLASS_COLOURS)] * 255).astype(np.float32)
    blended = image.astype(np.float32)
    foreground = labels > 0
    blended[foreground] = (1 - OVERLAY_ALPHA) * blended[foreground] + OVERLAY_ALPHA * colours[foreground]
    return blended.round().astype(np.uint8)


def _input_files(input_dir: Path) -> tuple[list[Path], dict[str, str]]:
    if not input_dir.is_dir():
        raise MedbenchError(f"Input folder {input_dir} does not exist or is not a folder.")
    images, skipped, stems = [], {}, {}
    for path in sorted(p for p in input_dir.iterdir() if p.is_file()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            skipped[path.name] = (f"not an image file (suffix {path.suffix or 'none'}; "
                                  f"accepted: {', '.join(sorted(IMAGE_SUFFIXES))})")
        elif path.stem in stems:
            skipped[path.name] = f"same name as {stems[path.stem]}, whose mask would be overwritten; rename one"
        else:
            stems[path.stem] = path.name
            images.append(path)
    return images, skipped


@torch.no_grad()
def predict(model_uri: str, input_dir: Path, output_dir: Path, device: str = "cpu") -> PredictResult:
    """Segment every image file of `input_dir` with registered model `model_uri`.

    Writes into `output_dir`, at each input's original size: `<stem>_mask.png` (8-bit label
    map, value = class index), `<stem>_overlay.png`, and `class_areas.csv`. Files that are
    not images (by suffix), cannot be read or exceed `medbench.data.imageio.MAX_IMAGE_PIXELS`
    are skipped with the reason logged and returned.

    Args:
        model_uri: `models:/NAME@ALIAS` or `models:/NAME/VERSION`.
        input_dir: folder of images (not searched recursively).
        output_dir: folder for the results; created if missing.
        device: `cpu`, `cuda` or `cuda:N`.

    Raises:
        MedbenchError: unknown model, alias or version; missing input folder; no image
            could be segmented.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    files, skipped = _input_files(input_dir)
    pre = recorded_preprocessing(model_uri)
    model = tracking.load_model(model_uri).to(device).eval()
    output_dir.mkdir(parents=True, exist_ok=True)

    masks, overlays, rows = [], [], []
    for path in files:
        try:
            image = read_image(path)
        except MedbenchError as error:
            skipped[path.name] = str(error)
            continue
        height, width = image.shape[:2]
        logits = model(_to_batch(image, pre).to(device))  # (1, K, S, S)
        logits = F.interpolate(logits.float(), size=(height, width), mode="bilinear", align_corners=False)
        labels = logits.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()  # (H, W)

        masks.append(output_dir / f"{path.stem}_mask.png")
        Image.fromarray(labels).save(masks[-1])
        overlays.append(output_dir / f"{path.stem}_overlay.png")
        Image.fromarray(_overlay(image, labels)).save(overlays[-1])
        counts = np.bincount(labels.ravel(), minlength=len(pre.class_names))
        row = {"file": path.name, "width": width, "height": height}
        for name, count in zip(pre.class_names, counts):
            row[f"{name}_pixels"] = int(count)
            row[f"{name}_fraction"] = round(float(count) / labels.size, 6)
        rows.append(row)

    for name, reason in skipped.items():
        log.warning("Skipped %s: %s", name, reason)
    if not rows:
        raise MedbenchError(
            f"No image in {input_dir} could be segmented ({len(skipped)} skipped"
            + (f": {'; '.join(f'{n}: {r}' for n, r in skipped.items())}" if skipped else "")
            + f"). Put {', '.join(sorted(IMAGE_SUFFIXES))} files there."
        )
    areas = output_dir / AREAS_CSV
    with open(areas, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return PredictResult(masks, overlays, areas, skipped)
