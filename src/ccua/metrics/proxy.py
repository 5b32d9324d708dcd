"""A cheap FID for logging during training."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ccua.images import to_uint8_nchw
from ccua.metrics.evaluate import match_reference
from ccua.metrics.features import FeatureNet
from ccua.metrics.reference import Reference, reference_features
from ccua.metrics.scores import fid_from_features

logger = logging.getLogger(__name__)


class ProxyFID:
    """FID of a few hundred generated images against a fixed reference subset.

    The reference statistics (``num_samples`` real images, an equal share per class, seeded) are
    computed once here (or read from ``cache_dir``); each call extracts the generated images'
    features and returns one number. With a few hundred images FID is biased upwards and noisy:
    the value is for following one run over training, not for comparing with published FIDs.
    With the classifier feature network (128-d) a call on 500 images takes about a second on CPU.
    """

    def __init__(self, reference: Any, feature_net: FeatureNet, num_samples: int | None = 2000, seed: int = 0,
                 cache_dir: str | Path | None = None, reference_key: str | None = None,
                 reference_labels: Any = None):
        self.feature_net = feature_net
        self.reference = Reference.wrap(reference, reference_key, reference_labels)
        self.num_samples = num_samples
        feats = reference_features(self.reference, feature_net, cache_dir, num_samples, seed)
        self.reference_features = feats.features.astype(np.float64)
        self.reference_stats = feats.stats
        self.reference_shape = tuple(self.reference.image_shape())

    def __call__(self, images_uint8: Any, labels: Any = None) -> float:
        """FID of uint8 images (NHWC/NCHW) against the reference subset. ``labels`` are only checked
        for length: the reference subset is class-balanced, so sample labels uniformly."""
        images = to_uint8_nchw(images_uint8)
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if len(images) < 2:
            raise ValueError("ProxyFID needs at least 2 images")
        if tuple(images.shape[1:]) != self.reference_shape:
            images = match_reference(images, self.reference_shape, [])
        features, _ = self.feature_net.extract(images, want_logits=False, desc="proxy FID")
        return fid_from_features(self.reference_features, features.numpy(), stats1=self.reference_stats).value
