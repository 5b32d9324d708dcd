"""The exponential long-tail profile, seeded subsampling, the head-to-tail ranking and its groups."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def longtail_counts(n_max: int, num_classes: int, imbalance: float) -> list[int]:
    """Images per class, n_c = floor(n_max * imbalance^(c / (C - 1))), class 0 = head.

    >>> longtail_counts(5000, 10, 0.01)
    [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    """
    if num_classes < 1 or n_max < 1:
        raise ValueError("num_classes and n_max must be positive")
    if not 0 < imbalance <= 1:
        raise ValueError(f"imbalance must be in (0, 1], got {imbalance}")
    if num_classes == 1:
        return [n_max]
    # The small epsilon keeps exact powers (e.g. 0.01^1 * 5000 = 50) from rounding down to 49.
    return [int(math.floor(n_max * imbalance ** (c / (num_classes - 1)) + 1e-9)) for c in range(num_classes)]


def class_label(c: int, class_names: Sequence[str] | None = None) -> str:
    """How messages name a class: its index, and its folder or name where it has one."""
    if class_names and c < len(class_names) and class_names[c] != str(c):
        return f"class {c} ({class_names[c]!r})"
    return f"class {c}"


def longtail_indices(labels: np.ndarray, counts: list[int], seed: int = 0,
                     class_names: Sequence[str] | None = None) -> np.ndarray:
    """Indices keeping counts[c] images of class c, chosen by a seeded shuffle within each class.

    Raises ValueError if a class has fewer images than asked for or ends with none (naming the
    class by ``class_names``, e.g. its folder, where given).
    """
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    kept = []
    for c, n in enumerate(counts):
        members = np.flatnonzero(labels == c)
        if n < 1:
            raise ValueError(f"{class_label(c, class_names)} is left with no image (asked for {n}); raise n_max "
                             "or the imbalance factor")
        if len(members) < n:
            raise ValueError(f"{class_label(c, class_names)} has {len(members)} images, fewer than the {n} the "
                             "profile asks for")
        kept.append(members[rng.permutation(len(members))[:n]])
    return np.sort(np.concatenate(kept))


def classes_head_to_tail(class_counts: Sequence[int]) -> list[int]:
    """Class indices ranked by training count, most images first; ties keep the lower index first.

    The one ranking behind everything that says "head" or "tail": class-balanced resampling, the
    head/body/tail thirds, the rows of sample grids. A split file (ImageNet-LT, Places-LT) or an
    image folder lists its classes in no order of frequency, so the class index says nothing.

    >>> classes_head_to_tail([5, 50, 20, 50])
    [1, 3, 2, 0]
    """
    counts = [int(c) for c in class_counts]
    return sorted(range(len(counts)), key=lambda c: (-counts[c], c))


def class_groups(num_classes: int, class_counts: Sequence[int] | None = None) -> dict[str, list[int]]:
    """Head / body / tail: the three thirds of the classes ranked head to tail.

    The ranking is :func:`classes_head_to_tail` of ``class_counts`` (the training images per
    class); without counts the class index is taken as the rank (class 0 = head), which is right
    only for the built-in exponential profiles. With C not divisible by 3 the remainder goes to
    the head first, then the body (C = 10: 4 / 3 / 3). Each group lists its classes head to tail.
    """
    if class_counts is None:
        ranked = list(range(num_classes))
    else:
        if len(class_counts) != num_classes:
            raise ValueError(f"{len(class_counts)} class counts for {num_classes} classes")
        ranked = classes_head_to_tail(class_counts)
    base, extra = divmod(num_classes, 3)
    sizes = [base + (1 if i < extra else 0) for i in range(3)]
    bounds = np.cumsum([0] + sizes)
    return {name: ranked[bounds[i]: bounds[i + 1]] for i, name in enumerate(("head", "body", "tail"))}


def count_groups(class_counts: list[int] | np.ndarray) -> dict[str, list[int]]:
    """Many / medium / few: more than 100, 20 to 100, fewer than 20 training images."""
    counts = np.asarray(class_counts)
    return {
        "many": [int(c) for c in np.flatnonzero(counts > 100)],
        "medium": [int(c) for c in np.flatnonzero((counts >= 20) & (counts <= 100))],
        "few": [int(c) for c in np.flatnonzero(counts < 20)],
    }


#: how evaluation groups the classes: ``thirds`` (head / body / tail, :func:`class_groups`) or
#: ``counts`` (many / medium / few, :func:`count_groups`)
GROUP_MODES = ("thirds", "counts")


def balanced_class_probabilities(num_classes: int, rho: float,
                                 class_counts: Sequence[int] | None = None) -> np.ndarray:
    """Class-balanced resampling: p_c proportional to rho^(r_c / (C - 1)), r_c the head-to-tail rank.

    The rank comes from :func:`classes_head_to_tail` of ``class_counts`` (the training images per
    class), so the most frequent class gets the largest share whatever its index; without counts
    the class index is the rank. Returned in class-index order.
    """
    if num_classes == 1:
        return np.ones(1)
    if class_counts is not None and len(class_counts) != num_classes:
        raise ValueError(f"{len(class_counts)} class counts for {num_classes} classes")
    order = range(num_classes) if class_counts is None else classes_head_to_tail(class_counts)
    rank = np.empty(num_classes)
    rank[list(order)] = np.arange(num_classes)
    weights = rho ** (rank / (num_classes - 1))
    return weights / weights.sum()
