"""CAMUS echocardiography (Leclerc et al., IEEE TMI 2019): 2D frames stored as NIfTI or MetaImage."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import ClassVar

import numpy as np

from medbench.data.imageio import file_sha256, read_volume
from medbench.data.sources import DatasetSource, Sample, decode_labels, register_dataset
from medbench.errors import MedbenchError

__all__ = ["CAMUS"]

FRAME_PATTERN = re.compile(r"(patient\d+)_(2CH|4CH)_(ED|ES)")


@register_dataset
class CAMUS(DatasetSource):
    """CAMUS: 500 patients x 2 views (2CH, 4CH) x 2 frames (ED, ES), 4 classes.

    Two releases are read:
    - NIfTI: `database_nifti/patientNNNN/patientNNNN_<view>_<frame>.nii.gz` with
      `..._gt.nii.gz`;
    - MetaImage (older): `training/patientNNNN/patientNNNN_<view>_<frame>.mhd` (+ `.raw`)
      with `..._gt.mhd`.
    Sample ids are `patientNNNN_<view>_<frame>` and the patient is the group, so folds
    never split a patient. Masks are label maps 0..3.
    """

    name = "camus"
    class_names = ("background", "left-ventricle", "myocardium", "left-atrium")
    modality = "echocardiography"
    layout = (
        "database_nifti/patientNNNN/patientNNNN_{2CH,4CH}_{ED,ES}.nii.gz and ..._gt.nii.gz, or the older "
        "training/patientNNNN/..._{ED,ES}.mhd (+ .raw) and ..._gt.mhd; get it (free registration) from "
        "https://www.creatis.insa-lyon.fr/Challenge/camus/"
    )
    augmentation = "echocardiography"
    releases: ClassVar[tuple[tuple[str, str], ...]] = (("database_nifti", ".nii.gz"), ("training", ".mhd"))

    def _release(self, folder: Path) -> tuple[Path, str]:
        for subfolder, suffix in self.releases:
            if (folder / subfolder).is_dir():
                return folder / subfolder, suffix
        raise MedbenchError(
            f"No CAMUS release under {folder}: expected a database_nifti/ or training/ folder. "
            f"Expected layout: {self.layout}."
        )

    def is_present(self, folder: Path) -> bool:
        return any((folder / subfolder).is_dir() for subfolder, _ in self.releases)

    def samples(self, folder: Path) -> list[Sample]:
        root, suffix = self._release(folder)
        samples, orphans = [], []
        for patient in sorted(p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"patient\d+", p.name)):
            for image in sorted(patient.glob(f"{patient.name}_*{suffix}")):
                frame = image.name[: -len(suffix)]
                if not FRAME_PATTERN.fullmatch(frame):
                    continue  # ground truth, half sequences and other files
                mask = patient / f"{frame}_gt{suffix}"
                if not mask.is_file():
                    orphans.append(image.name)
                    continue
                samples.append(Sample(frame, image, mask, patient.name))
            masks_without_image = [
                m.name for m in patient.glob(f"*_gt{suffix}")
                if not (patient / (m.name[: -len(f"_gt{suffix}")] + suffix)).is_file()
            ]
            if masks_without_image:
                raise MedbenchError(
                    f"{len(masks_without_image)} masks in {patient} have no image, e.g. {masks_without_image[:3]}. "
                    "Add the images or remove those masks."
                )
        if orphans:
            raise MedbenchError(
                f"{len(orphans)} CAMUS frames under {root} have no ground truth (<frame>_gt{suffix}), e.g. "
                f"{orphans[:3]}. Add the masks or remove those frames."
            )
        if not samples:
            raise MedbenchError(f"No CAMUS frames (patientNNNN_<view>_<frame>{suffix}) found under {root}.")
        return samples

    def checksum(self, path: Path) -> str:
        """SHA-256 of the file, and for a MetaImage header also of the data file it names."""
        if path.suffix.lower() != ".mhd":
            return file_sha256(path)
        header = path.read_text(errors="replace")
        match = re.search(r"^\s*ElementDataFile\s*=\s*(.+?)\s*$", header, re.MULTILINE)
        if match is None:
            raise MedbenchError(f"MetaImage header {path} has no ElementDataFile line. Replace the file.")
        data_file = path.parent / match.group(1)
        if match.group(1) != "LOCAL" and not data_file.is_file():
            raise MedbenchError(
                f"MetaImage header {path} names data file {data_file}, which does not exist. Copy the .raw file "
                "next to the header or remove the sample."
            )
        parts = [file_sha256(path)] + ([file_sha256(data_file)] if match.group(1) != "LOCAL" else [])
        return hashlib.sha256(" ".join(parts).encode()).hexdigest()

    def read_image(self, sample: Sample) -> np.ndarray:
        frame = read_volume(sample.image).astype(np.float64)
        if frame.max() > 255 or frame.min() < 0:  # not 8-bit: scale into 0..255
            frame = (frame - frame.min()) / max(float(np.ptp(frame)), 1e-12) * 255.0
        gray = np.round(frame).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)

    def read_mask(self, sample: Sample) -> tuple[np.ndarray, float]:
        return self.decode_mask(read_volume(sample.mask), sample.mask)

    def decode_mask(self, pixels: np.ndarray, path: Path) -> tuple[np.ndarray, float]:
        return decode_labels(np.round(pixels).astype(np.int64), path, self.num_classes), 0.0

    def orientation(self, path: Path) -> int:
        return 1  # NIfTI and MetaImage files carry no EXIF tag
