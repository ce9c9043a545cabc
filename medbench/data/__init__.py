"""Dataset sources, preparation, splits and the torch dataset."""

from medbench.data.dataset import NORMALIZATION, SegmentationDataset, augmentation, to_tensor
from medbench.data.prepare import PreparedDataset, cache_root, prepare_dataset
from medbench.data.sources import DatasetSource, Sample, data_root, get_source, list_datasets

__all__ = [
    "NORMALIZATION",
    "DatasetSource",
    "PreparedDataset",
    "Sample",
    "SegmentationDataset",
    "augmentation",
    "cache_root",
    "data_root",
    "get_source",
    "list_datasets",
    "prepare_dataset",
    "to_tensor",
]
