"""Torch dataset over a prepared dataset, and the preprocessing shared by training and inference."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from medbench.data.prepare import PreparedDataset

__all__ = ["NORMALIZATION", "SegmentationDataset", "augmentation", "seed_worker_augmentation", "to_tensor"]

# ImageNet statistics: every model gets the same input scaling, pretrained or not.
NORMALIZATION = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def augmentation(name: str, seed: int) -> A.Compose | None:
    """The training augmentation recipe `name`, identical for every model; `none` disables it.

    `default`: flips, 90-degree rotations, a mild affine transform and brightness/contrast.
    """
    if name == "none":
        return None
    if name != "default":
        from medbench.errors import unknown_name_error

        raise unknown_name_error("augmentation", name, ["default", "none"])
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.RandomRotate90(p=0.5),
            A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-15, 15), p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
        ],
        seed=seed,
    )


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 image to a normalized (3, H, W) float tensor."""
    mean = np.asarray(NORMALIZATION["mean"], dtype=np.float32)
    std = np.asarray(NORMALIZATION["std"], dtype=np.float32)
    scaled = (image.astype(np.float32) / 255.0 - mean) / std
    return torch.from_numpy(np.ascontiguousarray(scaled.transpose(2, 0, 1)))


class SegmentationDataset(Dataset):
    """Items `(image (3, S, S) float, mask (S, S) int64, index)` of a prepared dataset subset."""

    def __init__(
        self, prepared: PreparedDataset, indices: Sequence[int], transform: A.Compose | None = None
    ) -> None:
        self.prepared = prepared
        self.indices = list(indices)
        self.transform = transform
        self._images: np.ndarray | None = None
        self._masks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        if self._images is None:  # opened lazily so each worker process maps its own view
            self._images, self._masks = self.prepared.images, self.prepared.masks
        index = self.indices[item]
        image = np.asarray(self._images[index])
        mask = np.asarray(self._masks[index])
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return to_tensor(image), torch.from_numpy(mask.astype(np.int64)), index


def seed_worker_augmentation(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: seed the worker's copy of the augmentation from its torch seed.

    Without it every worker process starts from the main process's augmentation state in
    every epoch and repeats the same augmentations. The torch seed of a worker derives
    from the loader's generator, so the augmentation stays reproducible and resumable.
    """
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None)
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(info.seed % 2**32)
