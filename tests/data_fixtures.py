"""Tiny datasets in the official layouts of ISIC 2018, NeoPolyp-Small and CAMUS, for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

NEOPOLYP_COLOURS = {0: (0, 0, 0), 1: (0, 255, 0), 2: (255, 0, 0)}


def smooth_image(seed: int, size: tuple[int, int] = (48, 64)) -> np.ndarray:
    """A smooth random RGB image (H, W, 3) uint8: a 6x8 random grid upsampled bicubically.

    Distinct seeds give images with distinct structure, as distinct photographs have.
    """
    grid = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(grid).resize((size[1], size[0]), Image.Resampling.BICUBIC))


def label_map(seed: int, size: tuple[int, int], num_classes: int) -> np.ndarray:
    """An (H, W) uint8 label map with one rectangle per foreground class."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(size, np.uint8)
    for label in range(1, num_classes):
        top, left = rng.integers(0, size[0] // 2), rng.integers(0, size[1] // 2)
        labels[top : top + size[0] // 3, left : left + size[1] // 3] = label
    return labels


def make_neopolyp(root: Path, n: int = 12, size: tuple[int, int] = (48, 64)) -> Path:
    """NeoPolyp-Small layout: train/train/<id>.jpeg and colour-coded train_gt/train_gt/<id>.jpeg."""
    images, masks = root / "train" / "train", root / "train_gt" / "train_gt"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(smooth_image(100 + i, size)).save(images / f"case{i:02d}.jpeg", quality=90)
        labels = label_map(i, size, 3)
        colour = np.zeros((*size, 3), np.uint8)
        for label, rgb in NEOPOLYP_COLOURS.items():
            colour[labels == label] = rgb
        Image.fromarray(colour).save(masks / f"case{i:02d}.jpeg", quality=95)
    return root


def make_isic(root: Path, counts: dict[str, int] | None = None, size: tuple[int, int] = (40, 48)) -> Path:
    """ISIC 2018 Task 1 layout with Training, Validation and Test subsets (ids numbered across them)."""
    counts = counts or {"Training": 10, "Validation": 4, "Test": 4}
    number = 0
    for subset, n in counts.items():
        images = root / f"ISIC2018_Task1-2_{subset}_Input"
        masks = root / f"ISIC2018_Task1_{subset}_GroundTruth"
        images.mkdir(parents=True)
        masks.mkdir(parents=True)
        (images / "LICENSE.txt").write_text("CC-BY-NC")  # the archives ship text files beside the images
        for _ in range(n):
            name = f"ISIC_{number:07d}"
            Image.fromarray(smooth_image(number, size)).save(images / f"{name}.jpg", quality=95)
            Image.fromarray(label_map(number, size, 2) * 255).save(masks / f"{name}_segmentation.png")
            number += 1
    return root


def camus_frame(patient: int, view: str, frame: str, size: tuple[int, int] = (36, 28)) -> tuple[np.ndarray, np.ndarray]:
    """A (H, W) uint8 echo-like frame and its (H, W) label map 0..3, distinct per patient, view and frame."""
    seed = patient * 4 + ("2CH", "4CH").index(view) * 2 + ("ED", "ES").index(frame)
    image = smooth_image(1000 + seed, size)[..., 0]
    return image, label_map(seed, size, 4)


def make_camus(root: Path, patients: int = 6, release: str = "nifti") -> Path:
    """CAMUS layout: `database_nifti/` (NIfTI, via nibabel) or `training/` (MetaImage, via SimpleITK)."""
    for patient in range(1, patients + 1):
        name = f"patient{patient:04d}"
        folder = root / ("database_nifti" if release == "nifti" else "training") / name
        folder.mkdir(parents=True)
        for view in ("2CH", "4CH"):
            for frame in ("ED", "ES"):
                image, labels = camus_frame(patient, view, frame)
                for suffix, array in (("", image), ("_gt", labels)):
                    stem = folder / f"{name}_{view}_{frame}{suffix}"
                    if release == "nifti":
                        import nibabel

                        # NIfTI stores (x, y): the column index first, as the CAMUS files do
                        nibabel.save(nibabel.Nifti1Image(array.T[..., None], np.eye(4)), f"{stem}.nii.gz")
                    else:
                        import SimpleITK as sitk

                        sitk.WriteImage(sitk.GetImageFromArray(array[None]), f"{stem}.mhd")
    return root
