"""Long-tailed data: sources, the exponential profile, the training set and its batch order.

The names of ``data.name`` are the image sources of :data:`ccua.data.sources.SOURCES` and
``latents`` (a cache of VAE latents written by ``ccua data encode``): :func:`data_set_names`. A source
is a loader and one :func:`register_source` line (the image folder's is below).
"""

from __future__ import annotations

import functools
import json
import logging

import numpy as np

from ccua.config import DataConfig, as_dict, config_from_dict
from ccua.data.dataset import LongTailDataset, to_model_range, to_uint8
from ccua.data.longtail import (GROUP_MODES, balanced_class_probabilities, class_groups, class_label,
                                classes_head_to_tail, count_groups, longtail_counts, longtail_indices)
from ccua.data.batches import ResumableBatchSampler
from ccua.data.image_folder import ImageFolderConfig, load_split_of
from ccua.data.sources import (SOURCES, SPLITS, ArraySource, DataError, FolderSource, ImageSource, SourceConfig,
                               load_source, load_split, register_source, source_settings)

log = logging.getLogger(__name__)

# A reference whose largest class has more than this many times the images of its smallest is
# called imbalanced in evaluation results.
BALANCE_TOLERANCE = 2.0

#: the data set of cached VAE latents (its images are not pixels)
LATENTS = "latents"

register_source("image_folder", load_split_of, ImageFolderConfig)


def data_set_names() -> tuple[str, ...]:
    """Every valid ``data.name``: the registered sources (a source registered later included) and latents."""
    return (*SOURCES, LATENTS)


def is_latent(config: DataConfig) -> bool:
    """Whether the data set is a latent cache (samples then go through the VAE decoder)."""
    return config.name == LATENTS


def source_channels(config: DataConfig, source: ImageSource) -> int:
    """``data.channels``, else the source's own: 1 for grey images, 3 for colour ones."""
    return config.channels or source.native_channels()


def longtail_subset(labels: np.ndarray, num_classes: int, config: DataConfig,
                    class_names: list[str] | None = None) -> np.ndarray:
    """Indices of the long-tailed training subset described by ``config`` (all if imbalance is None)."""
    available = np.bincount(labels, minlength=num_classes)
    empty = np.flatnonzero(available == 0)
    if len(empty):
        raise DataError(f"{class_label(int(empty[0]), class_names)} has no image in the source data")
    if config.imbalance is None:
        return np.arange(len(labels))
    n_max = config.n_max or int(available.max())
    counts = longtail_counts(n_max, num_classes, config.imbalance)
    try:
        return longtail_indices(labels, counts, config.longtail_seed, class_names)
    except ValueError as error:
        raise DataError(str(error)) from None


def build_training_set(config: DataConfig):
    """The training data set described by ``config``: a LongTailDataset, or cached latents."""
    if is_latent(config):
        from ccua.latent import LatentDataset

        if not config.root:
            raise DataError("data.root must point to a latent cache written by `ccua data encode`")
        return LatentDataset(config.root, hflip=config.hflip)
    source = load_split(config, "train")
    indices = longtail_subset(source.labels, source.num_classes, config, source.class_names)
    return LongTailDataset(source, indices, config.resolution, source_channels(config, source))


def training_class_counts(config: DataConfig) -> list[int]:
    """Images per class of the training set ``config`` describes, without decoding any image."""
    source = load_split(config, "train")
    indices = longtail_subset(source.labels, source.num_classes, config, source.class_names)
    return np.bincount(source.labels[indices], minlength=source.num_classes).tolist()


def build_reference_set(config: DataConfig, split: str = "train") -> LongTailDataset:
    """The reference: the whole source split (no long-tail subsampling), same resolution.

    For a split-file data set the train split is the long-tailed split file itself and the test
    split is its test split file; :func:`describe_reference` says which it is.
    """
    if is_latent(config):
        raise DataError("a latent cache has no pixel reference set; evaluate against the image source")
    return _reference_set(json.dumps(as_dict(config), sort_keys=True), split)


@functools.lru_cache(maxsize=4)
def _reference_set(settings: str, split: str) -> LongTailDataset:
    # Made once per process and settings: an in-memory source is resized whole when it is built,
    # and a comparison evaluates against the same reference many times.
    config = config_from_dict({"data": json.loads(settings)}).data
    source = load_split(config, split)
    return LongTailDataset(source, np.arange(len(source)), config.resolution, source_channels(config, source))


def describe_reference(labels: np.ndarray, num_classes: int, split: str = "train",
                       config: DataConfig | None = None) -> dict:
    """What a reference set is: its source and split, per-class image counts, whether it is balanced.

    ``balanced`` is False when a class has no image or the largest class has more than
    BALANCE_TOLERANCE times the images of the smallest; ``note`` then says what the numbers are
    measured against (and, for a split-file data set, where a balanced reference is).
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    source = "images given by the caller" if config is None else source_settings(config).description(config, split)
    balanced = bool(counts.min() > 0 and counts.max() <= BALANCE_TOLERANCE * counts.min())
    info = {"split": split, "source": source, "per_class_min": int(counts.min()), "per_class_max": int(counts.max()),
            "balanced": balanced, "note": None}
    if not balanced:
        info["note"] = (f"the reference ({source}, {split} split) is not balanced: {counts.min()} to {counts.max()} "
                        "images per class, so overall and group numbers weigh its classes unequally")
        where_balanced = None if config is None else source_settings(config).imbalance_note(split)
        if where_balanced:
            info["note"] += f"; {where_balanced}"
    return info


def verify_images(config: DataConfig, progress: bool = True) -> tuple[int, list[tuple[str, str]]]:
    """Open every image file of the data set once (train split, and the test split file if set).

    Returns the number of files checked and ``(path, reason)`` of the unreadable ones. In-memory
    sources (Fashion-MNIST, MNIST, CIFAR) are decoded whole when loaded: loading them is the check,
    and they count no files.
    """
    if is_latent(config):
        raise DataError("a latent cache holds no image files to verify; verify the pixel data set it was "
                        "encoded from")
    splits = ["train"] + (["test"] if source_settings(config).has_test_split() else [])
    checked, bad = 0, []
    for split in splits:
        source = load_split(config, split)
        if isinstance(source, FolderSource):
            bad += source.unreadable(progress=progress)
            checked += len(source)
    return checked, bad

def describe_classes(dataset, data: DataConfig) -> str:
    """The text ``ccua data`` prints: the set's size, then each class's name, count and group
    (thirds of the classes ranked by training count), then the groups (by rank and by count)."""
    counts = dataset.class_counts()
    lines = [f"{data.name}: {len(dataset)} images, {dataset.num_classes} classes, "
             f"imbalance {data.imbalance}, resolution {data.resolution}"]
    groups = class_groups(dataset.num_classes, counts)
    group_of = {c: g for g, members in groups.items() for c in members}
    names = getattr(dataset, "class_names", [str(c) for c in range(dataset.num_classes)])
    lines.append(f"{'class':>5}  {'name':<16} {'count':>7}  group")
    lines += [f"{c:>5}  {names[c][:16]:<16} {n:>7}  {group_of[c]}" for c, n in enumerate(counts)]
    lines += [f"{name}: classes {_class_list(members)}, {sum(counts[c] for c in members)} images"
              for name, members in groups.items()]
    lines += [f"{name} (by count): {len(members)} classes" for name, members in count_groups(counts).items()]
    return "\n".join(lines)


def _class_list(members: list[int], shown: int = 12) -> str:
    """"7-9" for a run of consecutive classes, else the classes (head to tail), shortened."""
    if members and members == list(range(members[0], members[-1] + 1)):
        return f"{members[0]}-{members[-1]}" if len(members) > 1 else str(members[0])
    text = ", ".join(str(c) for c in members[:shown])
    return text + (f", ... ({len(members)} classes)" if len(members) > shown else "")


__all__ = [
    "BALANCE_TOLERANCE", "GROUP_MODES", "LATENTS", "SOURCES", "SPLITS", "ArraySource", "DataError", "FolderSource",
    "ImageFolderConfig", "ImageSource", "LongTailDataset", "ResumableBatchSampler", "SourceConfig",
    "balanced_class_probabilities", "build_reference_set", "build_training_set", "class_groups",
    "classes_head_to_tail", "count_groups", "data_set_names", "describe_classes", "describe_reference", "is_latent",
    "load_source", "load_split", "longtail_counts", "longtail_indices", "longtail_subset", "register_source",
    "source_settings", "to_model_range", "to_uint8", "training_class_counts", "verify_images",
]
