"""Prepare a dataset source into the common form that every run reads.

A prepared dataset is a folder with
- `manifest.json`: ids, source files and their SHA-256, original sizes, groups, class
  names, removed duplicates and class pixel shares;
- `images.npy` (N, S, S, 3) uint8 and `masks.npy` (N, S, S) uint8 at the working size S,
  read back memory-mapped;
- `splits.json`: seeded folds, grouped by patient where the dataset has patients.

The folder name is a key over the source files' checksums and the preparation settings,
so a changed file or setting prepares anew and an unchanged one is reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from medbench import __version__
from medbench.data.imageio import file_sha256
from medbench.data.sources import DatasetSource, Sample, get_source
from medbench.data.splits import load_splits, make_folds, write_splits
from medbench.errors import MedbenchError

__all__ = ["PreparedDataset", "cache_root", "prepare_dataset"]

log = logging.getLogger(__name__)

# Bumped whenever the prepared format or decoding changes, so old caches are not reused.
FORMAT_VERSION = 1


def cache_root() -> Path:
    """Folder for prepared datasets: `MEDBENCH_CACHE_DIR`, else `~/.cache/medbench`."""
    if os.environ.get("MEDBENCH_CACHE_DIR"):
        return Path(os.environ["MEDBENCH_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "medbench"


@dataclass(frozen=True)
class PreparedDataset:
    """A prepared dataset folder, with its arrays memory-mapped."""

    path: Path
    manifest: dict
    splits: dict

    @property
    def ids(self) -> list[str]:
        return [s["id"] for s in self.manifest["samples"]]

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    @property
    def num_classes(self) -> int:
        return len(self.manifest["class_names"])

    @property
    def images(self) -> np.ndarray:
        return np.load(self.path / "images.npy", mmap_mode="r")

    @property
    def masks(self) -> np.ndarray:
        return np.load(self.path / "masks.npy", mmap_mode="r")

    def fold_indices(self, fold: int) -> tuple[list[int], list[int]]:
        """Array indices of the training and validation ids of `fold`."""
        folds = self.splits["folds"]
        if not 0 <= fold < len(folds):
            raise MedbenchError(f"fold must be in 0..{len(folds) - 1}, got {fold}.")
        position = {sample_id: i for i, sample_id in enumerate(self.ids)}
        return (
            [position[i] for i in folds[fold]["train"]],
            [position[i] for i in folds[fold]["val"]],
        )


def _find_duplicates(samples: list[Sample], digests: dict[str, str]) -> tuple[list[Sample], list[dict]]:
    """Drop images whose bytes equal an earlier image's; keep the first id in sorted order."""
    first_with: dict[str, str] = {}
    kept, removed = [], []
    for sample in samples:
        digest = digests[sample.id]
        if digest in first_with:
            removed.append({"id": sample.id, "kept": first_with[digest], "reason": "identical bytes", "distance": 0})
            continue
        first_with[digest] = sample.id
        kept.append(sample)
    return kept, removed


def _settings_key(source: DatasetSource, samples: list[dict], settings: dict) -> str:
    payload = json.dumps(
        {
            "format": FORMAT_VERSION,
            "source": source.name,
            "classes": list(source.class_names),
            "settings": settings,
            "files": [(s["id"], s["image_sha256"], s["mask_sha256"]) for s in samples],
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def prepare_dataset(
    dataset: str,
    data_dir: str | Path | None = None,
    image_size: int = 512,
    max_images: int | None = None,
    num_folds: int = 5,
    split_seed: int = 0,
    progress: bool = True,
) -> PreparedDataset:
    """Prepare `dataset` (a name from `list_datasets()`) at `image_size`, or reuse its cache.

    Identical image files are removed before `max_images` and splitting, and listed in the
    manifest with the id they duplicate.
    """
    source = get_source(dataset)
    folder = source.folder(data_dir)
    samples = source.samples(folder)

    digests = {s.id: file_sha256(s.image) for s in tqdm(samples, desc=f"{dataset}: checksums", disable=not progress)}
    samples, duplicates = _find_duplicates(samples, digests)
    for duplicate in duplicates:
        log.warning("Removed %s: %s of %s", duplicate["id"], duplicate["reason"], duplicate["kept"])
    if max_images is not None:
        samples = samples[:max_images]
    records = [
        {
            "id": s.id,
            "image": str(s.image),
            "mask": str(s.mask),
            "group": s.group,
            "image_sha256": digests[s.id],
            "mask_sha256": file_sha256(s.mask),
        }
        for s in samples
    ]
    settings = {"image_size": image_size, "max_images": max_images, "num_folds": num_folds, "split_seed": split_seed}
    target = cache_root() / "prepared" / dataset / _settings_key(source, records, settings)
    if (target / "manifest.json").is_file():
        log.info("Reusing prepared %s at %s", dataset, target)
        return PreparedDataset(target, json.loads((target / "manifest.json").read_text()), load_splits(target / "splits.json"))

    staging = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        manifest = _write_arrays(source, samples, records, staging, image_size, progress)
        manifest.update(
            dataset=dataset,
            source_folder=str(folder),
            class_names=list(source.class_names),
            settings=settings,
            duplicates=duplicates,
            medbench_version=__version__,
        )
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
        grouping = "patient" if any(s.group != s.id for s in samples) else "image"
        folds = make_folds([s.id for s in samples], [s.group for s in samples], num_folds, split_seed)
        write_splits(staging / "splits.json", folds, split_seed, grouping)
        if target.exists():  # another process finished first
            shutil.rmtree(staging)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("Prepared %d images of %s at %s", len(samples), dataset, target)
    return PreparedDataset(target, json.loads((target / "manifest.json").read_text()), load_splits(target / "splits.json"))


def _write_arrays(
    source: DatasetSource, samples: list[Sample], records: list[dict], folder: Path, size: int, progress: bool
) -> dict:
    n = len(samples)
    images = np.lib.format.open_memmap(folder / "images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    masks = np.lib.format.open_memmap(folder / "masks.npy", mode="w+", dtype=np.uint8, shape=(n, size, size))
    pixel_counts = np.zeros(source.num_classes, dtype=np.int64)
    images_with_class = np.zeros(source.num_classes, dtype=np.int64)
    for i, (sample, record) in enumerate(
        tqdm(list(zip(samples, records)), desc=f"{source.name}: decoding", disable=not progress)
    ):
        image = source.read_image(sample)
        mask, ambiguous = source.read_mask(sample)
        if image.shape[:2] != mask.shape[:2]:
            raise MedbenchError(
                f"Mask {sample.mask} is {mask.shape[1]}x{mask.shape[0]} but its image {sample.image} is "
                f"{image.shape[1]}x{image.shape[0]} (width x height). Masks must have their image's size."
            )
        record["original_size"] = list(image.shape[:2])
        record["ambiguous_share"] = ambiguous
        images[i] = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
        masks[i] = np.asarray(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST))
        counts = np.bincount(masks[i].ravel(), minlength=source.num_classes)
        pixel_counts += counts
        images_with_class += counts > 0
    images.flush()
    masks.flush()
    return {
        "samples": records,
        "num_images": n,
        "class_pixel_share": (pixel_counts / max(pixel_counts.sum(), 1)).tolist(),
        "images_with_class": images_with_class.tolist(),
    }
