"""The exponential long-tail profile, seeded subsampling, and head/body/tail groups."""

from __future__ import annotations

import math

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


def longtail_indices(labels: np.ndarray, counts: list[int], seed: int = 0) -> np.ndarray:
    """Indices keeping counts[c] images of class c, chosen by a seeded shuffle within each class.

    Raises ValueError if a class has fewer images than asked for or ends with none.
    """
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    kept = []
    for c, n in enumerate(counts):
        members = np.flatnonzero(labels == c)
        if n < 1:
            raise ValueError(f"class {c} is left with no image (asked for {n}); raise n_max or the imbalance factor")
        if len(members) < n:
            raise ValueError(f"class {c} has {len(members)} images, fewer than the {n} the profile asks for")
        kept.append(members[rng.permutation(len(members))[:n]])
    return np.sort(np.concatenate(kept))


def class_groups(num_classes: int) -> dict[str, list[int]]:
    """Head / body / tail: the three thirds of the classes ordered head to tail.

    With C not divisible by 3 the remainder goes to the head first, then the body
    (C = 10: 4 / 3 / 3).
    """
    base, extra = divmod(num_classes, 3)
    sizes = [base + (1 if i < extra else 0) for i in range(3)]
    bounds = np.cumsum([0] + sizes)
    return {name: list(range(bounds[i], bounds[i + 1])) for i, name in enumerate(("head", "body", "tail"))}


def count_groups(class_counts: list[int] | np.ndarray) -> dict[str, list[int]]:
    """Many / medium / few: more than 100, 20 to 100, fewer than 20 training images."""
    counts = np.asarray(class_counts)
    return {
        "many": [int(c) for c in np.flatnonzero(counts > 100)],
        "medium": [int(c) for c in np.flatnonzero((counts >= 20) & (counts <= 100))],
        "few": [int(c) for c in np.flatnonzero(counts < 20)],
    }


def balanced_class_probabilities(num_classes: int, rho: float) -> np.ndarray:
    """Class-balanced resampling: p_c proportional to rho^(c / (C - 1)), head to tail."""
    if num_classes == 1:
        return np.ones(1)
    weights = rho ** (np.arange(num_classes) / (num_classes - 1))
    return weights / weights.sum()
