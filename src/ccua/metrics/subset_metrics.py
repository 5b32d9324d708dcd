"""The metrics of every scored subset (overall, each group, each class), each the owner of its names.

A metric computes its numbers from the features (and logits) of one subset and declares the
:class:`Column` s it writes: the key in metrics.json, the column of the comparison tables, the
header of metrics.md and plots. The evaluation loop, metrics.md, the comparison tables, the plots
and the Python API ask :data:`SUBSET_METRICS`; none of them writes a metric's name itself. A new
metric is a :class:`SubsetMetric` and one :func:`register_metric` line (docs/extending.md).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ccua.metrics.features import FeatureNet
from ccua.metrics.scores import GaussianStats, class_accuracy, fid_from_features, inception_score, kid, precision_recall


@dataclass(frozen=True)
class Column:
    """One number a metric writes into a subset's row of metrics.json, and how it is shown."""

    key: str  # its key in metrics.json rows
    name: str  # its column in comparison tables and CSV files (with ``_<group>`` per group)
    header: str  # its header in metrics.md tables
    title: str  # its axis title in plots
    digits: int = 3  # decimals in metrics.md
    scale: float = 1.0  # metrics.md shows value x scale (KID x1e3)
    spread: str | None = None  # the key of its ± (a standard deviation), shown beside it in metrics.md
    per_group: bool = True  # also computed and compared per group and class (IS: overall only)
    small: bool = False  # values near 1e-3: comparison tables print them in scientific notation


@dataclass
class SubsetInputs:
    """What a metric sees of one subset: features of the generated and reference images of its
    classes, the generated images' logits and labels, and the evaluation's settings."""

    generated: np.ndarray
    reference: np.ndarray
    logits: torch.Tensor | None
    labels: np.ndarray
    feature_net: FeatureNet
    settings: dict[str, Any]
    reference_stats: GaussianStats | None = None  # cached statistics of the whole reference (overall only)


class SubsetMetric(abc.ABC):
    """A metric of one subset: ``score`` returns its columns' keys (and any bookkeeping keys)."""

    columns: tuple[Column, ...] = ()

    @abc.abstractmethod
    def score(self, inputs: SubsetInputs) -> dict[str, Any]:
        """The metric's numbers for one subset, keyed as its ``columns`` declare."""


FID = Column("fid", "fid", "FID", "FID", digits=2)
KID = Column("kid_mean", "kid", "KID x1e3", "KID", digits=2, scale=1e3, spread="kid_std", small=True)
PRECISION = Column("precision", "precision", "precision", "precision")
RECALL = Column("recall", "recall", "recall", "recall")
INCEPTION_SCORE = Column("inception_score_mean", "is", "IS", "IS", spread="inception_score_std", per_group=False)
CLASS_ACCURACY = Column("class_accuracy", "class_accuracy", "class acc", "class accuracy")


class FrechetDistance(SubsetMetric):
    columns = (FID,)

    def score(self, inputs: SubsetInputs) -> dict[str, Any]:
        fid = fid_from_features(inputs.reference, inputs.generated, stats1=inputs.reference_stats)
        return {FID.key: fid.value, "rank_deficient": fid.rank_deficient}


class KernelDistance(SubsetMetric):
    columns = (KID,)

    def score(self, inputs: SubsetInputs) -> dict[str, Any]:
        settings = inputs.settings
        mean, std, size = kid(inputs.reference, inputs.generated, settings["kid_subsets"],
                              settings["kid_subset_size"], settings["seed"])
        return {KID.key: mean, KID.spread: std, "kid_subset_size": size}


class PrecisionRecall(SubsetMetric):
    columns = (PRECISION, RECALL)

    def score(self, inputs: SubsetInputs) -> dict[str, Any]:
        k, cap, reference = inputs.settings["pr_k"], inputs.settings["pr_reference"], inputs.reference
        cap = len(inputs.generated) if cap == "match" else cap
        if cap is not None and len(reference) > cap:
            # Equal-sized sets as in Kynkaanniemi et al.; recall depends on the set sizes, and all
            # pairwise distances of a 60k reference would take hours on a CPU.
            rng = np.random.RandomState(inputs.settings["seed"])
            reference = reference[np.sort(rng.choice(len(reference), cap, replace=False))]
        row: dict[str, Any] = {"n_ref_pr": int(len(reference))}
        if len(inputs.generated) > k and len(reference) > k:
            row[PRECISION.key], row[RECALL.key] = precision_recall(reference, inputs.generated, k=k)
        else:
            row[PRECISION.key] = row[RECALL.key] = None
            row["note"] = f"precision/recall need more than k={k} samples per set"
        return row


class InceptionScore(SubsetMetric):
    """From the feature network's logits (the Inception Score proper with Inception's head)."""

    columns = (INCEPTION_SCORE,)

    def score(self, inputs: SubsetInputs) -> dict[str, Any]:
        if inputs.logits is None:
            return {INCEPTION_SCORE.key: None, INCEPTION_SCORE.spread: None}
        mean, std = inception_score(inputs.logits, inputs.settings["is_splits"])
        return {INCEPTION_SCORE.key: mean, INCEPTION_SCORE.spread: std}


class ClassAccuracy(SubsetMetric):
    """The share of generated images the domain classifier assigns to their own label."""

    columns = (CLASS_ACCURACY,)

    def score(self, inputs: SubsetInputs) -> dict[str, Any]:
        if inputs.logits is None or not inputs.feature_net.logits_are_classes:
            return {}
        return {CLASS_ACCURACY.key: class_accuracy(inputs.logits, inputs.labels)}


#: the metrics of every subset, in the order of their columns in reports
SUBSET_METRICS: list[SubsetMetric] = []


def register_metric(metric: SubsetMetric) -> SubsetMetric:
    """Score every subset with ``metric`` and show its columns in metrics.md and the reports."""
    taken = {column.key for known in SUBSET_METRICS for column in known.columns}
    clash = [column.key for column in metric.columns if column.key in taken]
    if clash:
        raise ValueError(f"metric columns {clash} are already written by another metric")
    SUBSET_METRICS.append(metric)
    return metric


register_metric(FrechetDistance())
register_metric(KernelDistance())
register_metric(PrecisionRecall())
register_metric(InceptionScore())
register_metric(ClassAccuracy())


def registered_columns(per_group: bool = False) -> list[Column]:
    """Every registered metric's columns in report order; ``per_group``: those of groups and classes."""
    return [column for metric in SUBSET_METRICS for column in metric.columns if column.per_group or not per_group]


def score_subset(inputs: SubsetInputs, overall: bool) -> dict[str, Any]:
    """The row of one subset: counts, then every registered metric's numbers (overall-only metrics
    for the whole set only)."""
    row: dict[str, Any] = {"n_gen": int(len(inputs.generated)), "n_ref": int(len(inputs.reference))}
    for metric in SUBSET_METRICS:
        if overall or all(column.per_group for column in metric.columns):
            row.update(metric.score(inputs))
    return row


__all__ = ["CLASS_ACCURACY", "FID", "INCEPTION_SCORE", "KID", "PRECISION", "RECALL", "SUBSET_METRICS", "Column",
           "SubsetInputs", "SubsetMetric", "registered_columns", "register_metric", "score_subset"]
