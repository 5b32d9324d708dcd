"""Long-tailed data: sources, the exponential profile, the training set and its batch order."""

from __future__ import annotations

import numpy as np

from ccua.config import DataConfig
from ccua.data.dataset import LongTailDataset, to_model_range, to_uint8
from ccua.data.longtail import (balanced_class_probabilities, class_groups, count_groups, longtail_counts,
                                longtail_indices)
from ccua.data.sampler import ResumableBatchSampler
from ccua.data.sources import ArraySource, DataError, FolderSource, ImageSource, load_source

DEFAULT_CHANNELS = {"fashion_mnist": 1, "mnist": 1}


def source_channels(config: DataConfig) -> int:
    return config.channels or DEFAULT_CHANNELS.get(config.name, 3)


def longtail_subset(labels: np.ndarray, num_classes: int, config: DataConfig) -> np.ndarray:
    """Indices of the long-tailed training subset described by ``config`` (all if imbalance is None)."""
    available = np.bincount(labels, minlength=num_classes)
    empty = np.flatnonzero(available == 0)
    if len(empty):
        raise DataError(f"class {int(empty[0])} has no image in the source data")
    if config.imbalance is None:
        return np.arange(len(labels))
    n_max = config.n_max or int(available.max())
    counts = longtail_counts(n_max, num_classes, config.imbalance)
    try:
        return longtail_indices(labels, counts, config.longtail_seed)
    except ValueError as error:
        raise DataError(str(error)) from None


def build_training_set(config: DataConfig):
    """The training data set described by ``config``: a LongTailDataset, or cached latents."""
    if config.name == "latents":
        from ccua.latent import LatentDataset

        if not config.root:
            raise DataError("data.root must point to a latent cache written by `ccua data encode`")
        return LatentDataset(config.root, hflip=config.hflip)
    source = load_source(config.name, config.root, "train", config.split_file, config.download)
    indices = longtail_subset(source.labels, source.num_classes, config)
    return LongTailDataset(source, indices, config.resolution, source_channels(config))


def build_reference_set(config: DataConfig, split: str = "train") -> LongTailDataset:
    """The balanced reference: the whole source split (no long-tail subsampling), same resolution."""
    if config.name == "latents":
        raise DataError("a latent cache has no pixel reference set; evaluate against the image source")
    source = load_source(config.name, config.root, split, config.split_file, config.download)
    return LongTailDataset(source, np.arange(len(source)), config.resolution, source_channels(config))


__all__ = [
    "ArraySource", "DataError", "FolderSource", "ImageSource", "LongTailDataset", "ResumableBatchSampler",
    "balanced_class_probabilities", "build_reference_set", "build_training_set", "class_groups",
    "count_groups", "load_source", "longtail_counts", "longtail_indices", "longtail_subset", "to_model_range",
    "to_uint8",
]
