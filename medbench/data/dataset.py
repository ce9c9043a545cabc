"""Torch dataset over a prepared dataset, and the preprocessing shared by training and inference."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from medbench.data.prepare import PreparedDataset

__all__ = [
    "AUGMENTATIONS",
    "NORMALIZATION",
    "SegmentationDataset",
    "augmentation",
    "describe_augmentation",
    "seed_augmentation",
    "seed_worker_augmentation",
    "to_tensor",
]

# ImageNet statistics: every model gets the same input scaling, pretrained or not.
NORMALIZATION = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def _shared_geometry(rotate: float) -> list[A.BasicTransform]:
    return [
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=0.5),
        A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-rotate, rotate), p=0.5),
    ]


def _recipe_transforms(name: str) -> list[A.BasicTransform]:
    contrast = A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5)
    if name == "default":
        return [*_shared_geometry(15), contrast]
    if name == "endoscopy":
        # no canonical orientation in a colonoscope's view; light colour varies between scopes
        hue = A.HueSaturationValue(hue_shift_limit=5, sat_shift_limit=15, val_shift_limit=10, p=0.3)
        return [*_shared_geometry(15), contrast, hue]
    if name == "dermoscopy":
        # lesions have no orientation; skin tone and lighting vary
        hue = A.HueSaturationValue(hue_shift_limit=5, sat_shift_limit=20, val_shift_limit=10, p=0.3)
        return [*_shared_geometry(30), contrast, hue]
    if name == "microscopy":
        return [*_shared_geometry(15), contrast]
    if name == "echocardiography":
        # no flips or 90-degree turns: the probe apex is at the top and the chambers keep their sides
        return [
            A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-10, 10), p=0.5),
            contrast,
            A.RandomGamma(gamma_limit=(80, 120), p=0.3),
        ]
    from medbench.errors import unknown_name_error

    raise unknown_name_error("augmentation", name, AUGMENTATIONS)


AUGMENTATIONS = ("default", "dermoscopy", "echocardiography", "endoscopy", "microscopy", "none")


def augmentation(name: str, seed: int) -> A.Compose | None:
    """The training augmentation recipe `name`, identical for every model; `none` disables it.

    Each dataset source names its recipe (`DatasetSource.augmentation`):
    `default` (flips, 90-degree rotations, a mild affine transform, brightness/contrast),
    `endoscopy` and `dermoscopy` (the same plus mild hue/saturation shifts; dermoscopy
    rotates up to 30 degrees), `microscopy` (as `default`) and `echocardiography` (affine
    up to 10 degrees, brightness/contrast and gamma, no flips).
    """
    if name == "none":
        return None
    transform = A.Compose(_recipe_transforms(name))
    seed_augmentation(transform, seed)
    return transform


def seed_augmentation(transform: A.Compose, seed: int) -> None:
    """Seed `transform` and give each of its steps its own generator derived from `seed`.

    albumentations' `Compose.set_random_seed` (2.0.8) gives every step the same seed, so
    steps with equal probabilities fire together: a horizontal flip always came with a
    vertical one. Child seeds from `numpy.random.SeedSequence` keep the steps independent.
    """
    transform.set_random_seed(seed)
    children = np.random.SeedSequence(seed).spawn(len(transform.transforms))
    for step, child in zip(transform.transforms, children):
        step.set_random_seed(int(child.generate_state(1)[0]))


def describe_augmentation(name: str, seed: int) -> dict:
    """Serialize the recipe `name` with albumentations' `A.to_dict`, for run records."""
    transform = augmentation(name, seed)
    return {"name": name, "transform": None if transform is None else A.to_dict(transform)}


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
    if isinstance(transform, A.Compose):
        seed_augmentation(transform, info.seed % 2**32)
