"""Dataset sources: one class per official layout, behind a registry of names.

A source lists the (image, mask) pairs of a dataset folder, decodes masks into class
labels and knows how to obtain the data (download with a checksum, or where to get it).
Only `medbench.data` reads raw files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import urllib.request
import zipfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from medbench.data.imageio import exif_orientation, file_sha256, read_image, read_mask_pixels
from medbench.errors import MedbenchError, unknown_name_error

__all__ = [
    "DatasetSource",
    "Sample",
    "content_digest",
    "data_root",
    "decode_binary",
    "decode_labels",
    "decode_palette",
    "get_source",
    "list_datasets",
    "register_dataset",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Sample:
    """One image and its mask. Folds never separate samples of the same `group` (patient).

    `subset` is the official subset of the sample (`train`, `validation` or `test`) where
    the dataset publishes one, else `None`.
    """

    id: str
    image: Path
    mask: Path
    group: str
    subset: str | None = None


def data_root() -> Path:
    """Root folder holding one folder per dataset: `MEDBENCH_DATA_DIR`, else the user cache."""
    if os.environ.get("MEDBENCH_DATA_DIR"):
        return Path(os.environ["MEDBENCH_DATA_DIR"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "medbench" / "data"


def content_digest(files: list[tuple[str, Path]]) -> str:
    """SHA-256 over sorted `relative-path file-sha256` lines: one checksum of a set of files."""
    lines = sorted(f"{name} {file_sha256(path)}" for name, path in files)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def decode_binary(pixels: np.ndarray, path: Path, threshold: int = 127) -> np.ndarray:
    """Decode a binary mask: foreground where the gray value exceeds `threshold`.

    0/1 masks (maximum value 1) are taken as they are; colour masks use their channel mean.
    JPEG-compressed masks need the threshold because their edges hold in-between values.
    """
    gray = pixels.mean(axis=2) if pixels.ndim == 3 else pixels
    if gray.max() <= 1:
        return (gray > 0).astype(np.uint8)
    return (gray > threshold).astype(np.uint8)


def decode_labels(pixels: np.ndarray, path: Path, num_classes: int) -> np.ndarray:
    """Take an integer label map as it is, rejecting values outside 0..num_classes-1."""
    if pixels.ndim != 2:
        raise MedbenchError(
            f"Mask {path} has {pixels.shape[2]} channels; a label-map mask must be single-channel "
            "(grayscale or palette-mode PNG)."
        )
    values = np.unique(pixels)
    bad = values[(values < 0) | (values >= num_classes)]
    if bad.size:
        raise MedbenchError(
            f"Mask {path} holds values {bad[:10].tolist()} outside the classes 0..{num_classes - 1}. "
            "Fix the mask, or declare more classes (for 0/255 masks use mask_format 'binary')."
        )
    return pixels.astype(np.uint8)


def decode_palette(
    pixels: np.ndarray, path: Path, palette: dict[tuple[int, int, int], int], tolerance: float
) -> tuple[np.ndarray, float]:
    """Decode a colour-coded mask by assigning each pixel to the nearest palette colour.

    Returns the (H, W) uint8 label map and the share of ambiguous pixels: those whose
    nearest colour is farther than `tolerance / 2` (Euclidean RGB distance), such as JPEG
    ringing at edges. Pixels farther than `tolerance` from every palette colour are
    invalid and raise a `MedbenchError` that names the file and an example colour.
    """
    if pixels.ndim != 3:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    colours = np.array(list(palette), dtype=np.float32)  # (P, 3)
    labels = np.array(list(palette.values()), dtype=np.uint8)
    flat = pixels.reshape(-1, 3).astype(np.float32)  # (N, 3)
    # |x - c|^2 = |x|^2 - 2 x.c + |c|^2: one (N, 3) x (3, P) product instead of an
    # (N, P, 3) difference array, which is several times slower on full-size masks.
    partial = (colours**2).sum(axis=1)[None, :] - 2.0 * flat @ colours.T  # (N, P)
    nearest = partial.argmin(axis=1)
    squared = (flat**2).sum(axis=1) + partial[np.arange(flat.shape[0]), nearest]
    nearest_distance = np.sqrt(np.maximum(squared, 0.0))
    invalid = nearest_distance > tolerance
    if invalid.any():
        example = tuple(int(v) for v in flat[invalid.argmax()])
        raise MedbenchError(
            f"Mask {path} has {int(invalid.sum())} pixels farther than {tolerance} from every palette "
            f"colour, for example {example}. Add that colour to the palette or raise the tolerance."
        )
    ambiguous = float((nearest_distance > tolerance / 2).mean())
    return labels[nearest].reshape(pixels.shape[:2]), ambiguous


class DatasetSource(ABC):
    """An official dataset layout.

    Subclasses set `name`, `class_names`, `modality` and `layout` (a one-line description
    of the expected files), and implement `samples` and `decode_mask`. `augmentation` names
    the training recipe of `medbench.data.dataset.augmentation` used for every model.
    """

    name: ClassVar[str]
    class_names: ClassVar[tuple[str, ...]]
    modality: ClassVar[str]
    layout: ClassVar[str]
    augmentation: ClassVar[str] = "default"
    # Official subsets (`train`, `validation`, `test`) that `split="official"` can use.
    official_subsets: ClassVar[bool] = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def folder(self, data_dir: str | Path | None = None) -> Path:
        """The dataset folder: `data_dir` if given, else `<data root>/<name>`, obtained if missing."""
        if data_dir is not None:
            folder = Path(data_dir).expanduser()
            if not folder.is_dir():
                raise MedbenchError(
                    f"Data folder {folder} for dataset {self.name!r} does not exist. Expected layout: "
                    f"{self.layout}."
                )
            return folder
        folder = data_root() / self.name
        if not self.is_present(folder):
            self.obtain(folder)
        return folder

    def is_present(self, folder: Path) -> bool:
        return folder.is_dir() and any(folder.iterdir())

    def obtain(self, folder: Path) -> None:
        """Download the dataset into `folder`, or raise with where to get it."""
        raise MedbenchError(
            f"Dataset {self.name!r} was not found at {folder}. Put it there in its official layout "
            f"({self.layout}), set MEDBENCH_DATA_DIR to a folder that holds {self.name}/, or pass "
            "--data-dir."
        )

    @abstractmethod
    def samples(self, folder: Path) -> list[Sample]:
        """List the (image, mask) pairs in `folder`, sorted by id."""

    def checksum(self, path: Path) -> str:
        """SHA-256 of the file at `path` (sources whose files come in parts hash all parts)."""
        return file_sha256(path)

    def read_image(self, sample: Sample) -> np.ndarray:
        return read_image(sample.image)

    def read_pair(self, sample: Sample) -> tuple[np.ndarray, np.ndarray, float]:
        """Read the (H, W, 3) image, (H, W) label map and ambiguous-pixel share of `sample`.

        Raises when the mask's size differs from the image's, or when only one of the two
        files carries an EXIF rotation (so applying it would misalign them).
        """
        image = self.read_image(sample)
        mask, ambiguous = self.read_mask(sample)
        image_orientation, mask_orientation = self.orientation(sample.image), self.orientation(sample.mask)
        if image_orientation != mask_orientation:
            raise MedbenchError(
                f"Image {sample.image} has EXIF orientation {image_orientation} but its mask {sample.mask} "
                f"has {mask_orientation} (1 means upright), so the two would not line up after rotation. "
                "Re-save both files upright (apply the rotation, drop the EXIF tag) or give both the same tag."
            )
        if image.shape[:2] != mask.shape[:2]:
            raise MedbenchError(
                f"Mask {sample.mask} is {mask.shape[1]}x{mask.shape[0]} but its image {sample.image} is "
                f"{image.shape[1]}x{image.shape[0]} (width x height). Masks must have their image's size."
            )
        return image, mask, ambiguous

    def orientation(self, path: Path) -> int:
        """EXIF orientation of an image file (1 when upright or absent)."""
        return exif_orientation(path)

    def read_mask(self, sample: Sample) -> tuple[np.ndarray, float]:
        """Return the (H, W) uint8 label map and its share of ambiguous pixels."""
        return self.decode_mask(read_mask_pixels(sample.mask), sample.mask)

    @abstractmethod
    def decode_mask(self, pixels: np.ndarray, path: Path) -> tuple[np.ndarray, float]:
        """Turn stored mask pixels into class labels; return labels and ambiguous share."""


def _pair_by_stem(images_dir: Path, masks_dir: Path, mask_suffix: str = "") -> list[Sample]:
    """Pair every image in `images_dir` with the mask of the same stem (plus `mask_suffix`)."""
    for folder, role in ((images_dir, "images"), (masks_dir, "masks")):
        if not folder.is_dir():
            raise MedbenchError(f"Missing {role} folder {folder}.")
    masks = {p.stem: p for p in masks_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    samples, orphans = [], []
    for image in sorted(images_dir.iterdir()):
        if image.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        mask = masks.pop(image.stem + mask_suffix, None)
        if mask is None:
            orphans.append(image.name)
            continue
        samples.append(Sample(image.stem, image, mask, image.stem))
    if orphans:
        raise MedbenchError(
            f"{len(orphans)} images in {images_dir} have no mask in {masks_dir}, e.g. {orphans[:3]}. "
            "Add the masks or remove those images."
        )
    if masks:
        raise MedbenchError(
            f"{len(masks)} masks in {masks_dir} have no image in {images_dir}, e.g. "
            f"{sorted(masks)[:3]}. Add the images or remove those masks."
        )
    if not samples:
        raise MedbenchError(f"No images found in {images_dir} (looked for {', '.join(IMAGE_SUFFIXES)}).")
    return samples


_SOURCES: dict[str, type[DatasetSource]] = {}


def register_dataset(cls: type[DatasetSource]) -> type[DatasetSource]:
    if cls.name in _SOURCES:
        raise ValueError(f"Dataset {cls.name!r} is registered twice.")
    _SOURCES[cls.name] = cls
    return cls


def list_datasets() -> list[str]:
    return sorted(_SOURCES)


def get_source(name: str) -> DatasetSource:
    """Return the source registered as `name`; unknown names raise with the closest matches."""
    if name not in _SOURCES:
        raise unknown_name_error("dataset", name, _SOURCES)
    return _SOURCES[name]()


@register_dataset
class KvasirSEG(DatasetSource):
    """Kvasir-SEG (Jha et al., MMM 2020): 1,000 colonoscopy images with polyp masks.

    Layout of the official `kvasir-seg.zip`: `Kvasir-SEG/images/<id>.jpg` and
    `Kvasir-SEG/masks/<id>.jpg`. Masks are JPEG, so they are binarized at gray value 127.
    """

    name = "kvasir_seg"
    class_names = ("background", "polyp")
    modality = "colonoscopy"
    layout = "Kvasir-SEG/images/<id>.jpg and Kvasir-SEG/masks/<id>.jpg"
    augmentation = "endoscopy"
    url = "https://datasets.simula.no/downloads/kvasir-seg.zip"
    # Checksum of the unpacked images and masks (`content_digest` over images/<name> and
    # masks/<name>), so that any faithful copy of the archive verifies.
    # NOTE: computed from an unpacked copy of the release, not from a fresh download.
    digest = "8120fbd4a0a25f689c042d63ab17a6ec1caa1db9ab1191ae2d6e867aac0ba81d"

    def _inner(self, folder: Path) -> Path:
        return folder / "Kvasir-SEG" if (folder / "Kvasir-SEG").is_dir() else folder

    def is_present(self, folder: Path) -> bool:
        return (self._inner(folder) / "images").is_dir()

    def samples(self, folder: Path) -> list[Sample]:
        inner = self._inner(folder)
        return _pair_by_stem(inner / "images", inner / "masks")

    def decode_mask(self, pixels: np.ndarray, path: Path) -> tuple[np.ndarray, float]:
        return decode_binary(pixels, path), 0.0

    def obtain(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        log.info("Downloading Kvasir-SEG from %s into %s", self.url, folder)
        try:
            with tempfile.TemporaryDirectory(dir=folder) as tmp:
                archive = Path(tmp) / "kvasir-seg.zip"
                urllib.request.urlretrieve(self.url, archive)  # noqa: S310 (pinned https URL)
                with zipfile.ZipFile(archive) as zipped:
                    zipped.extractall(tmp)
                extracted = Path(tmp) / "Kvasir-SEG"
                self.verify(extracted)
                shutil.move(str(extracted), str(folder / "Kvasir-SEG"))
        except (OSError, zipfile.BadZipFile) as error:
            raise MedbenchError(
                f"Kvasir-SEG is not at {folder} and downloading {self.url} failed ({error}). "
                f"Download kvasir-seg.zip from that address and unpack it so that "
                f"{folder / 'Kvasir-SEG' / 'images'} exists, or set MEDBENCH_DATA_DIR to a folder "
                "holding kvasir_seg/Kvasir-SEG/."
            ) from error

    def verify(self, inner: Path) -> None:
        files = [
            (f"{sub}/{p.name}", p) for sub in ("images", "masks") for p in (inner / sub).iterdir()
        ]
        found = content_digest(files)
        if found != self.digest:
            raise MedbenchError(
                f"Kvasir-SEG files in {inner} do not match the published release (content SHA-256 "
                f"{found}, expected {self.digest}). Download the archive again from {self.url}."
            )


@register_dataset
class PH2(DatasetSource):
    """PH2 (Mendonça et al., EMBC 2013): 200 dermoscopy images with lesion masks.

    Layout: `PH2Dataset/PH2 Dataset images/IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp`
    (`.jpg` accepted) and `IMDxxx_lesion/IMDxxx_lesion.bmp`. The dataset needs a
    registration at its publisher, so it is not downloaded.
    """

    name = "ph2"
    class_names = ("background", "lesion")
    modality = "dermoscopy"
    augmentation = "dermoscopy"
    layout = (
        "PH2Dataset/PH2 Dataset images/IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp and "
        "IMDxxx/IMDxxx_lesion/IMDxxx_lesion.bmp; get it from https://www.fc.up.pt/addi/ph2%20database.html"
    )

    def _images_root(self, folder: Path) -> Path:
        for candidate in (folder / "PH2Dataset" / "PH2 Dataset images", folder / "PH2 Dataset images", folder):
            if candidate.is_dir() and any(p.name.startswith("IMD") for p in candidate.iterdir()):
                return candidate
        raise MedbenchError(f"No PH2 case folders (IMDxxx) found under {folder}. Expected layout: {self.layout}.")

    def is_present(self, folder: Path) -> bool:
        try:
            self._images_root(folder)
        except MedbenchError:
            return False
        return True

    def samples(self, folder: Path) -> list[Sample]:
        samples = []
        for case in sorted(p for p in self._images_root(folder).iterdir() if re.fullmatch(r"IMD\d+", p.name)):
            images = [
                case / f"{case.name}_Dermoscopic_Image" / f"{case.name}{suffix}"
                for suffix in (".bmp", ".jpg", ".png")
            ]
            image = next((p for p in images if p.is_file()), None)
            masks = [case / f"{case.name}_lesion" / f"{case.name}_lesion{s}" for s in (".bmp", ".png", ".jpg")]
            mask = next((p for p in masks if p.is_file()), None)
            if image is None:
                raise MedbenchError(f"PH2 case {case} has no dermoscopic image ({images[0].name} or .jpg).")
            if mask is None:
                raise MedbenchError(f"PH2 case {case} has no lesion mask ({masks[0]}).")
            samples.append(Sample(case.name, image, mask, case.name))
        return samples

    def decode_mask(self, pixels: np.ndarray, path: Path) -> tuple[np.ndarray, float]:
        return decode_binary(pixels, path), 0.0


@register_dataset
class Folder(DatasetSource):
    """A generic folder: `images/<id>.<ext>` and `masks/<id>.<ext>` with the same stem.

    An optional `medbench.json` in the folder declares the classes and how masks are
    stored; without it masks are binary (0/255 or 0/1):

        {"class_names": ["background", "a", "b"],
         "mask_format": "binary" | "labels" | "palette",
         "palette": {"0,0,0": 0, "255,0,0": 1, "0,255,0": 2},
         "palette_tolerance": 60}
    """

    name = "folder"
    class_names = ("background", "foreground")
    modality = "any"
    layout = "images/<id>.png and masks/<id>.png, optional medbench.json (pass --data-dir)"

    def __init__(self) -> None:
        self.mask_format = "binary"
        self.palette: dict[tuple[int, int, int], int] = {}
        self.palette_tolerance = 60.0
        self._declared_classes: tuple[str, ...] | None = None

    @property
    def num_classes(self) -> int:
        return len(self._declared_classes or self.class_names)

    def configure(self, folder: Path) -> None:
        """Read `medbench.json` of `folder`, if any."""
        spec_path = folder / "medbench.json"
        if not spec_path.is_file():
            return
        try:
            spec = json.loads(spec_path.read_text())
        except json.JSONDecodeError as error:
            raise MedbenchError(f"Invalid JSON in {spec_path}: {error}.") from error
        self.mask_format = spec.get("mask_format", "binary")
        if self.mask_format not in ("binary", "labels", "palette"):
            raise MedbenchError(
                f"{spec_path}: mask_format must be 'binary', 'labels' or 'palette', got {self.mask_format!r}."
            )
        if "class_names" in spec:
            self._declared_classes = tuple(spec["class_names"])
            self.class_names = self._declared_classes  # type: ignore[misc]
        if self.mask_format == "palette":
            try:
                self.palette = {
                    tuple(int(c) for c in colour.split(",")): int(label)  # type: ignore[misc]
                    for colour, label in spec["palette"].items()
                }
            except (KeyError, ValueError, AttributeError) as error:
                raise MedbenchError(
                    f"{spec_path}: palette must map 'R,G,B' strings to class indices, e.g. "
                    '{"0,0,0": 0, "255,0,0": 1}.'
                ) from error
            self.palette_tolerance = float(spec.get("palette_tolerance", self.palette_tolerance))

    def folder(self, data_dir: str | Path | None = None) -> Path:
        if data_dir is None:
            raise MedbenchError("Dataset 'folder' needs --data-dir pointing at a folder with images/ and masks/.")
        folder = super().folder(data_dir)
        self.configure(folder)
        return folder

    def samples(self, folder: Path) -> list[Sample]:
        return _pair_by_stem(folder / "images", folder / "masks")

    def decode_mask(self, pixels: np.ndarray, path: Path) -> tuple[np.ndarray, float]:
        if self.mask_format == "labels":
            return decode_labels(pixels, path, self.num_classes), 0.0
        if self.mask_format == "palette":
            return decode_palette(pixels, path, self.palette, self.palette_tolerance)
        return decode_binary(pixels, path), 0.0


@register_dataset
class NeoPolypSmall(DatasetSource):
    """BKAI-IGH NeoPolyp-Small (Lan et al., 2021): 1,000 colonoscopy images, 3 classes.

    Layout of the competition download: `train/train/<id>.jpeg` and
    `train_gt/train_gt/<id>.jpeg`. Masks are colour-coded JPEGs (black background, green
    non-neoplastic, red neoplastic), so each pixel goes to the nearest of the three
    colours. JPEG blends of red and green lie up to about 180 (Euclidean RGB) from every
    palette colour, and the shared copy of the data has none beyond 220, so the
    tolerance is 240: pixels beyond it (blue, white) are invalid, and pixels beyond half of
    it count as ambiguous.
    """

    name = "neopolyp_small"
    class_names = ("background", "non-neoplastic", "neoplastic")
    modality = "colonoscopy"
    layout = (
        "train/train/<id>.jpeg and train_gt/train_gt/<id>.jpeg; get it from the BKAI-IGH NeoPolyp "
        "competition (https://www.kaggle.com/competitions/bkai-igh-neopolyp/data, needs a Kaggle account)"
    )
    augmentation = "endoscopy"
    palette: ClassVar[dict[tuple[int, int, int], int]] = {(0, 0, 0): 0, (0, 255, 0): 1, (255, 0, 0): 2}
    palette_tolerance: ClassVar[float] = 240.0

    def is_present(self, folder: Path) -> bool:
        return (folder / "train" / "train").is_dir()

    def samples(self, folder: Path) -> list[Sample]:
        return _pair_by_stem(folder / "train" / "train", folder / "train_gt" / "train_gt")

    def decode_mask(self, pixels: np.ndarray, path: Path) -> tuple[np.ndarray, float]:
        return decode_palette(pixels, path, self.palette, self.palette_tolerance)


@register_dataset
class DSB2018(DatasetSource):
    """Data Science Bowl 2018 nuclei (BBBC038), the 96x96 release with one merged mask per image.

    Layout: `images/<id>.png` and `masks/0/<id>.png` (gray masks, binarized at 127).
    """

    name = "dsb2018"
    class_names = ("background", "nucleus")
    modality = "microscopy"
    layout = (
        "images/<id>.png and masks/0/<id>.png; get stage1_train from https://bbbc.broadinstitute.org/BBBC038 "
        "and merge the nucleus masks of each image into masks/0/<id>.png"
    )
    augmentation = "microscopy"

    def is_present(self, folder: Path) -> bool:
        return (folder / "images").is_dir()

    def samples(self, folder: Path) -> list[Sample]:
        return _pair_by_stem(folder / "images", folder / "masks" / "0")

    def decode_mask(self, pixels: np.ndarray, path: Path) -> tuple[np.ndarray, float]:
        return decode_binary(pixels, path), 0.0


@register_dataset
class ISIC2018(DatasetSource):
    """ISIC 2018 Task 1 (Codella et al., 2019): dermoscopy images with lesion masks.

    Layout of the challenge archives, one pair of folders per official subset:
    `ISIC2018_Task1-2_<Subset>_Input/ISIC_<n>.jpg` and
    `ISIC2018_Task1_<Subset>_GroundTruth/ISIC_<n>_segmentation.png` (0/255), with
    `<Subset>` one of `Training` (required), `Validation` and `Test`. By default every
    present subset joins one pool for k-fold cross-validation; `split="official"` keeps
    the challenge's training, validation and test subsets instead.
    """

    name = "isic2018"
    class_names = ("background", "lesion")
    modality = "dermoscopy"
    layout = (
        "ISIC2018_Task1-2_Training_Input/ISIC_<n>.jpg and ISIC2018_Task1_Training_GroundTruth/"
        "ISIC_<n>_segmentation.png, likewise for Validation and Test; get the Task 1 archives from "
        "https://challenge.isic-archive.com/data/#2018"
    )
    augmentation = "dermoscopy"
    official_subsets = True
    subsets: ClassVar[dict[str, str]] = {"Training": "train", "Validation": "validation", "Test": "test"}

    def is_present(self, folder: Path) -> bool:
        return (folder / "ISIC2018_Task1-2_Training_Input").is_dir()

    def samples(self, folder: Path) -> list[Sample]:
        if not self.is_present(folder):
            raise MedbenchError(
                f"Missing images folder {folder / 'ISIC2018_Task1-2_Training_Input'}. Expected layout: {self.layout}."
            )
        samples = []
        for subset, role in self.subsets.items():
            images = folder / f"ISIC2018_Task1-2_{subset}_Input"
            if role != "train" and not images.is_dir():
                continue
            pairs = _pair_by_stem(images, folder / f"ISIC2018_Task1_{subset}_GroundTruth", "_segmentation")
            samples.extend(Sample(s.id, s.image, s.mask, s.group, role) for s in pairs)
        return sorted(samples, key=lambda s: s.id)

    def decode_mask(self, pixels: np.ndarray, path: Path) -> tuple[np.ndarray, float]:
        return decode_binary(pixels, path), 0.0
