"""Prepare a dataset source into the common form that every run reads.

A prepared dataset is a folder with
- `manifest.json`: ids, source files and their SHA-256, original sizes, groups, class
  names, removed duplicates and class pixel shares;
- `images.npy` (N, S, S, 3) uint8 and `masks.npy` (N, S, S) uint8 at the working size S,
  read back memory-mapped;
- `splits.json`: seeded folds, grouped by patient where the dataset has patients, with
  an optional held-out test split and an inner validation split per fold;
- `dataset_card.json` and `dataset_card.png`: counts, sizes, class shares, duplicates,
  and sample overlays.

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
from medbench.data.duplicates import NEAR_DUPLICATE_DISTANCE, PHASH_SIZE, find_duplicates, perceptual_hash
from medbench.data.sources import DatasetSource, Sample, get_source
from medbench.data.splits import build_splits, load_splits, write_splits
from medbench.errors import MedbenchError

__all__ = ["SPLIT_MODES", "PreparedDataset", "cache_root", "prepare_dataset"]

log = logging.getLogger(__name__)

# Bumped whenever the prepared format or decoding changes, so old caches are not reused.
FORMAT_VERSION = 2
SPLIT_MODES = ("kfold", "official")


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
    def augmentation(self) -> str:
        """Name of the dataset's training augmentation recipe (`medbench.data.augmentation`)."""
        return self.manifest.get("augmentation", "default")

    @property
    def images(self) -> np.ndarray:
        return np.load(self.path / "images.npy", mmap_mode="r")

    @property
    def masks(self) -> np.ndarray:
        return np.load(self.path / "masks.npy", mmap_mode="r")

    def _positions(self, ids: list[str]) -> list[int]:
        position = {sample_id: i for i, sample_id in enumerate(self.ids)}
        return [position[i] for i in ids]

    def _fold(self, fold: int) -> dict:
        folds = self.splits["folds"]
        if not 0 <= fold < len(folds):
            raise MedbenchError(f"fold must be in 0..{len(folds) - 1}, got {fold}.")
        return folds[fold]

    def fold_indices(self, fold: int) -> tuple[list[int], list[int]]:
        """Array indices of the training and validation ids of `fold`."""
        entry = self._fold(fold)
        return self._positions(entry["train"]), self._positions(entry["val"])

    def inner_fold_indices(self, fold: int) -> tuple[list[int], list[int]]:
        """Array indices of the inner training and inner validation ids of `fold`.

        Both are subsets of the fold's training ids, so early stopping on the inner
        validation split never uses the fold's validation ids (the leakage-free protocol).
        """
        entry = self._fold(fold)
        return self._positions(entry["inner_train"]), self._positions(entry["inner_val"])

    def test_indices(self) -> list[int]:
        """Array indices of the held-out test ids (empty unless a test split was requested)."""
        return self._positions(self.splits.get("test", []))


def _settings_key(source: DatasetSource, samples: list[Sample], checksums: dict, settings: dict) -> str:
    payload = json.dumps(
        {
            "format": FORMAT_VERSION,
            "source": source.name,
            "classes": list(source.class_names),
            "settings": settings,
            "files": [(s.id, *checksums[s.id], s.subset) for s in samples],
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _perceptual_hashes(source: DatasetSource, samples: list[Sample], checksums: dict, progress: bool) -> list[str]:
    """Perceptual hashes of the images, cached per image checksum across preparations."""
    cache_file = cache_root() / "phash" / f"{source.name}-{PHASH_SIZE}.json"
    try:
        known = json.loads(cache_file.read_text())
    except (OSError, json.JSONDecodeError):
        known = {}
    hashes = []
    for sample in tqdm(samples, desc=f"{source.name}: perceptual hashes", disable=None if progress else True):
        checksum = checksums[sample.id][0]
        if checksum not in known:
            known[checksum] = perceptual_hash(source.read_image(sample))
        hashes.append(known[checksum])
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    staging = cache_file.with_name(cache_file.name + f".tmp{os.getpid()}")
    staging.write_text(json.dumps(known))
    os.replace(staging, cache_file)
    return hashes


def prepare_dataset(
    dataset: str,
    data_dir: str | Path | None = None,
    image_size: int = 512,
    max_images: int | None = None,
    num_folds: int = 5,
    split_seed: int = 0,
    progress: bool = True,
    *,
    split: str = "kfold",
    test_fraction: float = 0.0,
    inner_val_fraction: float = 0.1,
    near_duplicate_distance: int = NEAR_DUPLICATE_DISTANCE,
) -> PreparedDataset:
    """Prepare `dataset` (a name from `list_datasets()`) at `image_size`, or reuse its cache.

    Duplicates are removed before `max_images` and splitting (see
    `medbench.data.duplicates`; a negative `near_duplicate_distance` keeps near-duplicates)
    and listed in the manifest with the id they duplicate. `split` is `kfold` (seeded
    grouped folds, after holding out `test_fraction` as a test split) or `official` (the
    dataset's published train/validation/test subsets, for sources that have them).
    """
    if split not in SPLIT_MODES:
        raise MedbenchError(f"split must be one of {', '.join(SPLIT_MODES)}, got {split!r}.")
    source = get_source(dataset)
    if split == "official" and not source.official_subsets:
        raise MedbenchError(f"Dataset {dataset!r} has no official subsets; use split 'kfold'.")
    folder = source.folder(data_dir)
    samples = source.samples(folder)

    checksums = {
        s.id: (source.checksum(s.image), source.checksum(s.mask))
        for s in tqdm(samples, desc=f"{dataset}: checksums", disable=None if progress else True)
    }
    settings = {
        "image_size": image_size, "max_images": max_images, "num_folds": num_folds, "split_seed": split_seed,
        "split": split, "test_fraction": test_fraction, "inner_val_fraction": inner_val_fraction,
        "near_duplicate_distance": near_duplicate_distance, "phash_size": PHASH_SIZE,
    }
    target = cache_root() / "prepared" / dataset / _settings_key(source, samples, checksums, settings)
    if (target / "manifest.json").is_file():
        log.info("Reusing prepared %s at %s", dataset, target)
        return _load(target)

    # duplicates first, then the max_images cut, so that the cut never keeps a duplicate
    hashes = _perceptual_hashes(source, samples, checksums, progress) if near_duplicate_distance >= 0 else None
    kept_ids, duplicates = find_duplicates(
        [s.id for s in samples], [checksums[s.id][0] for s in samples], [s.group for s in samples], hashes,
        near_duplicate_distance,
    )
    for duplicate in duplicates:
        log.info("Removed %s: %s of %s (distance %d)", duplicate["id"], duplicate["reason"], duplicate["kept"],
                 duplicate["distance"])
    log.info("Removed %d duplicates of %d images of %s", len(duplicates), len(samples), dataset)
    kept = set(kept_ids[:max_images] if max_images is not None else kept_ids)
    used = [s for s in samples if s.id in kept]
    records = [
        {"id": s.id, "image": str(s.image), "mask": str(s.mask), "group": s.group, "subset": s.subset,
         "image_sha256": checksums[s.id][0], "mask_sha256": checksums[s.id][1]}
        for s in used
    ]
    splits = build_splits(
        [s.id for s in used], [s.group for s in used], num_folds, split_seed, test_fraction, inner_val_fraction,
        {s.id: s.subset for s in used} if split == "official" else None,
    )

    staging = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        manifest = _write_arrays(source, used, records, staging, image_size, progress)
        manifest.update(
            dataset=dataset,
            source_folder=str(folder),
            class_names=list(source.class_names),
            augmentation=source.augmentation,
            settings=settings,
            source_images=len(samples),
            duplicates=duplicates,
            medbench_version=__version__,
        )
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
        write_splits(staging / "splits.json", splits)
        from medbench.data.card import write_dataset_card

        write_dataset_card(staging, manifest, splits)
        if target.exists():  # another process finished first
            shutil.rmtree(staging)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("Prepared %d images of %s at %s", len(used), dataset, target)
    return _load(target)


def _load(folder: Path) -> PreparedDataset:
    return PreparedDataset(folder, json.loads((folder / "manifest.json").read_text()), load_splits(folder / "splits.json"))


def _write_arrays(
    source: DatasetSource, samples: list[Sample], records: list[dict], folder: Path, size: int, progress: bool
) -> dict:
    n = len(samples)
    images = np.lib.format.open_memmap(folder / "images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    masks = np.lib.format.open_memmap(folder / "masks.npy", mode="w+", dtype=np.uint8, shape=(n, size, size))
    pixel_counts = np.zeros(source.num_classes, dtype=np.int64)
    images_with_class = np.zeros(source.num_classes, dtype=np.int64)
    for i, (sample, record) in enumerate(
        tqdm(list(zip(samples, records)), desc=f"{source.name}: decoding", disable=None if progress else True)
    ):
        image, mask, ambiguous = source.read_pair(sample)
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
