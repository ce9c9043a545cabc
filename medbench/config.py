"""Typed run configuration and protocol presets.

Field names are the MLproject parameter names and, with dashes, the command-line flags.
`dataclasses.asdict(config)` goes to MLflow params and into every checkpoint.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from medbench.data.duplicates import NEAR_DUPLICATE_DISTANCE
from medbench.errors import MedbenchError, unknown_name_error

__all__ = ["MAX_IMAGE_SIZE", "PRESETS", "PrepareConfig", "TrainConfig", "resolve_train_config"]

# Largest working resolution: eight times the reference protocol's 512. The prepared
# arrays hold every image at this size, so a mistyped value would fill the disk.
MAX_IMAGE_SIZE = 4096


# Protocol presets. `paper` follows Borst and Kounev (arXiv 2603.13044): 512x512 input,
# batch size 8, AdamW with the REX schedule, up to 150 epochs, early stopping on
# validation IoU with patience 20 and minimum improvement 0.001, mixed precision on GPU.
# `quick` keeps the same protocol at a size that trains in minutes on a laptop CPU.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "epochs": 150,
        "image_size": 512,
        "batch_size": 8,
        "lr": 1e-4,
        "weight_decay": 1e-2,
        "patience": 20,
        "min_delta": 1e-3,
        "max_images": None,
        "amp": True,
    },
    "quick": {
        "epochs": 3,
        "image_size": 128,
        "batch_size": 8,
        "lr": 3e-4,
        "weight_decay": 1e-2,
        "patience": 3,
        "min_delta": 1e-3,
        "max_images": 160,
        "amp": True,
    },
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one training run: (model, dataset, fold, seed) plus protocol.

    Attributes:
        model: registry name (`medbench models`).
        dataset: dataset name (`medbench datasets`).
        data_dir: folder of this one dataset; default `<data root>/<dataset>`.
        preset: protocol preset, `quick` or `paper`; it fills every unset field below.
        fold: cross-validation fold evaluated by this run, 0 to num_folds - 1.
        num_folds: number of folds in `splits.json`.
        seed: seed of weight initialization, augmentation and batch order.
        split_seed: seed of the fold assignment, shared by every run on the dataset.
        epochs: maximum number of epochs.
        image_size: side of the square working resolution in pixels.
        batch_size: training batch size.
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay.
        patience: epochs without validation IoU improvement before stopping.
        min_delta: smallest validation IoU increase that counts as an improvement.
        max_images: use only the first N images (sorted ids) after duplicate removal;
            `None` (or 0 on the command line) for all.
        amp: mixed precision (bfloat16 on CUDA only, ignored on CPU and for models that
            do not allow it).
        pretrained: load the registry's ImageNet encoder weights.
        weights: local weight file to load instead of downloading them.
        num_workers: data loader worker processes.
        device: `auto`, `cpu`, `cuda` or `cuda:N`.
        deterministic: use deterministic algorithms (slower on GPU).
        experiment: MLflow experiment name.
        register: register the trained model in the MLflow model registry.
        channels_last: keep the model and its inputs in channels-last memory format
            (faster convolutions on recent GPUs).
        compile: run the model through `torch.compile` (slow first steps, faster later
            ones; needs a C++ compiler on the CPU).
        resume: continue an interrupted run from its `last.pt`: `None` (or an empty
            string, `false`) starts a new run, `last` picks the latest unfinished run
            with this run name in the experiment, anything else is an MLflow run id.

        explain: at the end of the run, Grad-CAM maps and scores of the N worst and N
            random test images (`medbench explain`); 0 turns it off.
    """

    model: str
    dataset: str
    data_dir: str | None = None
    preset: str = "quick"
    fold: int = 0
    num_folds: int = 5
    seed: int = 0
    split_seed: int = 0
    epochs: int = 3
    image_size: int = 128
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 1e-2
    patience: int = 3
    min_delta: float = 1e-3
    max_images: int | None = None
    amp: bool = True
    pretrained: bool = False
    weights: str | None = None
    num_workers: int = 0
    device: str = "auto"
    deterministic: bool = True
    experiment: str = "medbench"
    register: bool = True
    channels_last: bool = False
    compile: bool = False
    resume: str | None = None
    explain: int = 0

    def __post_init__(self) -> None:
        self._check_types()
        checks = [
            (self.num_folds >= 2, f"num_folds must be at least 2, got {self.num_folds}"),
            (
                0 <= self.fold < self.num_folds,
                f"fold must be in 0..{self.num_folds - 1}, got {self.fold}",
            ),
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.image_size >= 32, f"image_size must be at least 32 pixels, got {self.image_size}"),
            (
                self.image_size <= MAX_IMAGE_SIZE,
                f"image_size must be at most {MAX_IMAGE_SIZE} pixels, got {self.image_size}",
            ),
            (self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}"),
            (self.lr > 0, f"lr must be positive, got {self.lr}"),
            (self.weight_decay >= 0, f"weight_decay must be non-negative, got {self.weight_decay}"),
            (self.patience >= 1, f"patience must be at least 1, got {self.patience}"),
            (self.min_delta >= 0, f"min_delta must be non-negative, got {self.min_delta}"),
            (
                self.max_images is None or self.max_images >= 2 * self.num_folds,
                f"max_images must be at least 2 * num_folds = {2 * self.num_folds}, got {self.max_images}",
            ),
            (self.num_workers >= 0, f"num_workers must be non-negative, got {self.num_workers}"),
            (
                self.device == "auto" or re.fullmatch(r"cpu|cuda(:\d+)?|mps", self.device) is not None,
                f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}",
            ),
            (self.explain >= 0, f"explain must be non-negative, got {self.explain}"),
        ]
        for ok, message in checks:
            if not ok:
                raise MedbenchError(message + ".")

    def _check_types(self) -> None:
        # Callers of the Python API pass values without argparse's conversion; a string
        # epoch count would otherwise fail deep inside training with a TypeError.
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            allowed = _FIELD_TYPES[str(field.type)]
            is_bool_for_number = isinstance(value, bool) and bool not in allowed
            if not isinstance(value, allowed) or is_bool_for_number:
                names = " or ".join("None" if t is type(None) else t.__name__ for t in allowed)
                raise MedbenchError(f"{field.name} must be {names}, got {value!r} of type {type(value).__name__}.")

    @property
    def run_name(self) -> str:
        return f"{self.model}__{self.dataset}__fold{self.fold}__seed{self.seed}"

    def as_params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "str | None": (str, type(None)),
    "int": (int,),
    "int | None": (int, type(None)),
    "float": (float, int),
    "bool": (bool,),
}


def resolve_train_config(preset: str = "quick", **fields: Any) -> TrainConfig:
    """Build a `TrainConfig` from a preset, overridden by every field that is not `None`."""
    if preset not in PRESETS:
        raise unknown_name_error("preset", preset, PRESETS)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(fields) - known
    if unknown:
        raise MedbenchError(f"Unknown configuration fields: {', '.join(sorted(unknown))}.")
    values = dict(PRESETS[preset])
    values.update({k: v for k, v in fields.items() if v is not None})
    if values.get("max_images") == 0:
        values["max_images"] = None
    if str(values.get("resume")).strip().lower() in ("", "none", "false", "0", "no", "off"):
        values["resume"] = None
    return TrainConfig(preset=preset, **values)


@dataclass(frozen=True)
class PrepareConfig:
    """Everything that defines one `medbench prepare` run.

    Attributes:
        dataset: dataset name (`medbench datasets`).
        data_dir: folder of this one dataset; default `<data root>/<dataset>`.
        image_size: side of the square working resolution in pixels.
        max_images: keep only the first N images (sorted ids) after duplicate removal;
            `None` (or 0 on the command line) for all.
        num_folds: number of cross-validation folds.
        split_seed: seed of the test, fold and inner-validation assignment.
        split: `kfold` (seeded grouped folds) or `official` (the dataset's published
            train/validation/test subsets, for ISIC 2018).
        test_fraction: share of the images held out as a test split before the folds
            (k-fold mode), 0 for none.
        inner_val_fraction: share of each fold's training images set aside as its inner
            validation split, for early stopping without the fold's validation images.
        near_duplicate_distance: largest perceptual-hash Hamming distance (of 256 bits)
            at which two images count as duplicates; negative to remove exact copies only.
        experiment: MLflow experiment of the run that records the dataset card.
        log_run: record the dataset card in an MLflow run (besides the prepared folder).
    """

    dataset: str
    data_dir: str | None = None
    image_size: int = 512
    max_images: int | None = None
    num_folds: int = 5
    split_seed: int = 0
    split: str = "kfold"
    test_fraction: float = 0.0
    inner_val_fraction: float = 0.1
    near_duplicate_distance: int = NEAR_DUPLICATE_DISTANCE
    experiment: str = "medbench-data"
    log_run: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.image_size >= 32, f"image_size must be at least 32 pixels, got {self.image_size}"),
            (self.num_folds >= 2, f"num_folds must be at least 2, got {self.num_folds}"),
            (self.split in ("kfold", "official"), f"split must be 'kfold' or 'official', got {self.split!r}"),
            (0 <= self.test_fraction < 1, f"test_fraction must be in [0, 1), got {self.test_fraction}"),
            (0 <= self.inner_val_fraction < 1, f"inner_val_fraction must be in [0, 1), got {self.inner_val_fraction}"),
            (
                self.max_images is None or self.max_images >= 2 * self.num_folds,
                f"max_images must be at least 2 * num_folds = {2 * self.num_folds}, got {self.max_images}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise MedbenchError(message + ".")

    def as_params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
