"""Evaluation: feature networks, FID / KID / precision-recall / IS, groups and per-class numbers.

Typical use::

    from ccua.metrics import Reference, build_feature_net, evaluate, write_metrics
    net = build_feature_net("inception")                     # or "classifier", path=...
    ref = Reference.from_config(config.data, "train")        # balanced, cached by key
    result = evaluate(images_uint8, labels, ref, train_counts, net, cache_dir="cache/fid")
    write_metrics(result, run_dir / "eval", provenance={"checkpoint": ..., "guidance": ...})

See docs/evaluation.md for how each number is computed.
"""

from ccua.metrics.classifier import ClassifierFeatureNet, SmallCNN, train_classifier
from ccua.metrics.evaluate import (evaluate, evaluate_against_stats, format_table, library_versions, load_metrics,
                                   write_metrics)
from ccua.metrics.features import (FEATURE_NETS, FeatureNet, RandomFeatureNet, build_feature_net, convert_channels,
                                   resize_uint8, to_uint8_nchw)
from ccua.metrics.inception import (PREPROCESS, FIDInceptionV3, InceptionFeatureNet, InceptionWeightsError,
                                    find_inception_weights, state_dict_from_torchscript)
from ccua.metrics.proxy import ProxyFID
from ccua.metrics.reference import (Reference, ReferenceFeatures, load_reference_stats, reference_features, reference_key,
                                    stratified_subset)
from ccua.metrics.scores import (FrechetResult, GaussianStats, class_accuracy, fid_from_features, frechet_distance,
                                 inception_score, kid, precision_recall)

__all__ = [
    "FEATURE_NETS", "PREPROCESS", "ClassifierFeatureNet", "FIDInceptionV3", "FeatureNet", "FrechetResult",
    "GaussianStats", "InceptionFeatureNet", "InceptionWeightsError", "ProxyFID", "RandomFeatureNet", "Reference",
    "ReferenceFeatures", "SmallCNN", "build_feature_net", "class_accuracy", "convert_channels", "evaluate",
    "evaluate_against_stats", "load_reference_stats",
    "fid_from_features", "find_inception_weights", "format_table", "frechet_distance", "inception_score", "kid",
    "library_versions", "load_metrics", "precision_recall", "reference_features", "reference_key", "resize_uint8",
    "state_dict_from_torchscript", "stratified_subset", "to_uint8_nchw", "train_classifier", "write_metrics",
]
