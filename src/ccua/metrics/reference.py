"""The reference (real) image set and its features, cached on disk.

Reference features are the expensive half of every evaluation (the full balanced training set
through Inception), and they do not change between runs, so they are written once per
(data set, split, resolution, channels, subset, feature network, weights, preprocessing). The
key is stored inside the file and compared on load: a file made with another network, other
weights or other data is rebuilt, never reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ccua.config import DataConfig
from ccua.data.sources import open_npz, source_settings
from ccua.distributed import DistInfo, broadcast_object
from ccua.files import atomic_file
from ccua.images import to_uint8_nchw
from ccua.metrics.features import DatasetImages, FeatureNet, TensorImages
from ccua.metrics.scores import GaussianStats

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1


@dataclass
class Reference:
    """Real images with labels, and a key naming them for the feature cache (None: no caching).

    ``images`` is a data set with ``uint8_image(i)`` (e.g. a LongTailDataset) or a uint8 array
    [N, H, W, C] / [N, C, H, W]. ``info`` says what the images are (split, source, per-class
    counts, whether balanced; see ``ccua.data.describe_reference``).
    """

    images: Any
    labels: np.ndarray
    key: str | None = None
    num_classes: int | None = None
    class_names: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.labels.ndim != 1:
            raise ValueError(f"reference labels must be 1-d, got shape {self.labels.shape}")
        if self.num_classes is None:
            self.num_classes = int(self.labels.max()) + 1 if len(self.labels) else 0
        if len(self.batches()) != len(self.labels):
            raise ValueError(f"reference has {len(self.batches())} images but {len(self.labels)} labels")

    @classmethod
    def from_config(cls, data_config: Any, split: str = "train") -> "Reference":
        """The balanced ``split`` of the configured data set at the configured resolution."""
        from ccua.data import build_reference_set, describe_reference

        dataset = build_reference_set(data_config, split)
        return cls(dataset, dataset.labels, reference_key(data_config, split, dataset), dataset.num_classes,
                   list(getattr(dataset, "class_names", [])),
                   describe_reference(dataset.labels, dataset.num_classes, split, data_config))

    @classmethod
    def wrap(cls, reference: Any, key: str | None = None, labels: Any = None,
             num_classes: int | None = None) -> "Reference":
        """Accept a Reference, a data set with ``labels``/``uint8_image``, or an array plus ``labels``."""
        if isinstance(reference, Reference):
            if key is not None and key != reference.key:
                reference = Reference(reference.images, reference.labels, key, reference.num_classes,
                                      reference.class_names, reference.info)
            return reference
        if hasattr(reference, "uint8_image"):
            labels = getattr(reference, "labels", None) if labels is None else labels
            if labels is None:
                raise ValueError("the reference data set has no labels")
            return cls(reference, labels, key, num_classes or getattr(reference, "num_classes", None),
                       list(getattr(reference, "class_names", [])))
        if labels is None:
            raise ValueError("a reference given as an image array needs reference_labels")
        return cls(reference, labels, key, num_classes)

    def batches(self, indices: np.ndarray | None = None):
        if hasattr(self.images, "uint8_image"):
            return DatasetImages(self.images, indices)
        images = to_uint8_nchw(self.images)
        return TensorImages(images if indices is None else images[torch.as_tensor(indices)])

    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the reference images (of the first one)."""
        return self.batches(np.arange(1)).get(0, 1).shape[1:]

    def fingerprint(self, indices: np.ndarray) -> str:
        """sha256 of the labels and of three images: catches a changed data set without reading all."""
        digest = hashlib.sha256(self.labels[indices].tobytes())
        batches = self.batches(indices)
        for position in sorted({0, len(indices) // 2, len(indices) - 1}):
            digest.update(batches.get(position, position + 1).contiguous().numpy().tobytes())
        return digest.hexdigest()


def reference_key(data_config: DataConfig, split: str, dataset: Any = None) -> str:
    """``<name>-<split>-<resolution>px-<channels>ch`` (+ the source's tag: the split file read) for a DataConfig."""
    channels = getattr(dataset, "channels", None) or data_config.channels
    key = f"{data_config.name}-{split}-{data_config.resolution}px-{channels}ch"
    tag = source_settings(data_config).reference_tag(split)
    return f"{key}-{tag}" if tag else key


def load_reference_stats(path: str | Path) -> GaussianStats:
    """``mu`` [D] and ``sigma`` [D, D] of a published reference statistics file (.npz, as ADM, EDM,
    clean-fid and pytorch-fid write them). The sample count is unknown (``n = 0``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference statistics file {path} does not exist")
    with open_npz(path, "arrays mu [D] and sigma [D, D]") as data:
        missing = [k for k in ("mu", "sigma") if k not in data.files]
        if missing:
            raise ValueError(f"{path} has no {' and '.join(missing)} array (it holds {', '.join(data.files) or 'nothing'}):"
                             " a reference statistics file has mu [D] and sigma [D, D]")
        mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise ValueError(f"{path}: mu has shape {mu.shape} and sigma {sigma.shape}, expected [D] and [D, D]")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{path}: mu or sigma holds NaN or infinite values")
    return GaussianStats(mu, sigma, 0)


def stratified_subset(labels: np.ndarray, max_total: int | None, seed: int = 0) -> np.ndarray:
    """At most ``max_total`` indices, as equal a share per class as the classes allow (seeded)."""
    if max_total is None or max_total >= len(labels):
        return np.arange(len(labels))
    rng = np.random.RandomState(seed)
    classes = np.unique(labels)
    members = {c: rng.permutation(np.flatnonzero(labels == c)) for c in classes}
    chosen: list[np.ndarray] = []
    budget, left = max_total, list(classes)
    # Fill small classes completely, then share what is left equally among the others.
    for c in sorted(left, key=lambda c: len(members[c])):
        share = budget // len(left)
        take = members[c][:share]
        chosen.append(take)
        budget -= len(take)
        left.remove(c)
    return np.sort(np.concatenate(chosen))


@dataclass
class ReferenceFeatures:
    """Reference features [N, D] float32, their labels, overall statistics and where they came from."""

    features: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    stats: GaussianStats
    key: dict[str, Any]
    cache_status: str  # hit | written | rebuilt | disabled
    path: Path | None = None


def _cache_file(cache_dir: Path, key: dict[str, Any]) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(key["reference"]))
    # The data fingerprint stays out of the name: changed data under the same name overwrites
    # (rebuilds) the stale file instead of leaving it behind.
    named = {k: v for k, v in key.items() if k != "fingerprint"}
    tag = hashlib.sha256(json.dumps(named, sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir / f"{safe}__{key['feature_net']}-{key['weights_hash'][:12]}-{tag}.npz"


def _load_cache(path: Path, key: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """The arrays of a cache file if its stored key equals ``key``; None otherwise."""
    try:
        with np.load(path, allow_pickle=False) as data:
            stored = json.loads(str(data["key"]))
            if stored != key:
                differing = sorted(k for k in set(stored) | set(key) if stored.get(k) != key.get(k))
                logger.warning("reference cache %s was made for other settings (%s differ); rebuilding", path,
                               ", ".join(differing))
                return None
            return {name: data[name] for name in ("features", "labels", "indices", "mu", "sigma")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        # truncated, or not a cache file at all: named, removed, and made anew
        logger.warning("reference cache %s cannot be read (%s); removing it and rebuilding", path,
                       " ".join(str(error).split()) or type(error).__name__)
        path.unlink(missing_ok=True)
        return None


def reference_features(reference: Reference, feature_net: FeatureNet, cache_dir: str | Path | None = None,
                       max_reference: int | None = None, seed: int = 0,
                       dist: DistInfo | None = None) -> ReferenceFeatures | None:
    """Features of the reference images, from the cache when a valid one exists.

    ``max_reference`` caps the number of images (an equal share per class, seeded): the full
    Fashion-MNIST training set takes over an hour through Inception on 2 CPU cores. Under
    several processes (``dist``) process 0 reads the cache; without a valid one every process
    extracts its share (:meth:`FeatureNet.extract`) and process 0 writes it. Process 0 returns
    the features, the others None.
    """
    dist = dist or DistInfo(device=feature_net.device)
    indices = stratified_subset(reference.labels, max_reference, seed)
    key, path, status = _cache_entry(reference, feature_net, cache_dir, indices, max_reference, seed)
    cached = _load_cache(path, key) if dist.is_main and path is not None and path.exists() else None
    if broadcast_object(cached is not None, dist):
        if cached is None:
            return None
        logger.info("reference features from cache %s", path)
        stats = GaussianStats(cached["mu"], cached["sigma"], int(len(cached["features"])))
        return ReferenceFeatures(cached["features"], cached["labels"], cached["indices"], stats, key, "hit", path)
    if path is not None and path.exists():
        status = "rebuilt"
    features, _ = feature_net.extract(reference.batches(indices), want_logits=False, desc="reference features",
                                      dist=dist)
    if features is None:
        return None
    features = features.numpy()
    labels = reference.labels[indices]
    stats = GaussianStats.from_features(features)
    if path is not None:
        with atomic_file(path) as stream:  # a crash never leaves a half-written cache behind
            np.savez(stream, features=features, labels=labels, indices=indices, mu=stats.mu, sigma=stats.sigma,
                     key=np.array(json.dumps(key, sort_keys=True)))
        logger.info("reference features written to %s", path)
    return ReferenceFeatures(features, labels, indices, stats, key or {}, status, path)


def _cache_entry(reference: Reference, feature_net: FeatureNet, cache_dir: str | Path | None, indices: np.ndarray,
                 max_reference: int | None, seed: int) -> tuple[dict[str, Any] | None, Path | None, str]:
    """The cache key, file and status ("written": to be made, "disabled": no caching) of a reference."""
    if cache_dir is None or reference.key is None:
        if cache_dir is not None:
            logger.info("reference has no cache key: its features are not cached")
        return None, None, "disabled"
    # The cap and its seed pick the images only when the cap is below the set's size: uncapped, every
    # evaluation seed shares one cache file (the same images, the same features).
    capped = len(indices) < len(reference.labels)
    key = {
        "format": CACHE_FORMAT, "reference": reference.key, "n": int(len(indices)),
        "max_reference": max_reference if capped else None, "subset_seed": seed if capped else None,
        "fingerprint": reference.fingerprint(indices),
        "feature_net": feature_net.name, "weights_hash": feature_net.weights_hash,
        "feature_config": feature_net.config_tag(), "dim": feature_net.dim, "bf16": feature_net.bf16,
    }
    return key, _cache_file(Path(cache_dir), key), "written"
