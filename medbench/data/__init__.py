"""Dataset sources, preparation, splits and the torch dataset."""

from medbench.data.dataset import (
    AUGMENTATIONS,
    NORMALIZATION,
    SegmentationDataset,
    augmentation,
    describe_augmentation,
    to_tensor,
)
from medbench.data.prepare import PreparedDataset, cache_root, prepare_dataset
from medbench.data.sources import DatasetSource, Sample, data_root, get_source, list_datasets
from medbench.data import camus  # noqa: F401,E402 (registers the CAMUS source)

__all__ = [
    "AUGMENTATIONS",
    "NORMALIZATION",
    "DatasetSource",
    "PreparedDataset",
    "Sample",
    "SegmentationDataset",
    "augmentation",
    "describe_augmentation",
    "cache_root",
    "data_root",
    "get_source",
    "list_datasets",
    "prepare_dataset",
    "to_tensor",
]
