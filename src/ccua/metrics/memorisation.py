"""Near-copies of training images: the memorisation test of Yoon et al. (2023).

A generated image counts as a near-copy when its distance to the nearest training image of its
class is less than ``threshold`` (1/3) times its distance to the second nearest: it sits far
closer to one training image than to any other, as a copy (or a copy up to a little noise)
does, while a new image lies between several. Distances are Euclidean in pixel space ([0, 1]
values at the training resolution). With horizontal-flip training, a training image's distance is
the smaller of the image's and its mirror's, so a mirrored copy also counts.

CCUA's claim is tail diversity instead of copies of the few tail images: the share of near-copies
per group measures that directly (a 60-image class is far easier to copy than a 6000-image one).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

DEFAULT_THRESHOLD = 1.0 / 3.0


def _flat_unit_range(images: Any) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float32 [N, C*H*W] in [0, 1]."""
    return torch.as_tensor(np.asarray(images)).float().flatten(1) / 255.0


def _mirror_aware_distances(queries: torch.Tensor, images: np.ndarray, hflip: bool) -> torch.Tensor:
    """[Q, M] distances to each training image (the smaller of it and its mirror with ``hflip``)."""
    candidates = _flat_unit_range(images)
    distances = torch.cdist(queries, candidates)
    if hflip:
        mirrored = _flat_unit_range(np.ascontiguousarray(np.asarray(images)[..., ::-1]))
        distances = torch.minimum(distances, torch.cdist(queries, mirrored))
    return distances


def nearest_neighbour_ratios(generated: np.ndarray, training: np.ndarray, hflip: bool = False) -> dict[str, np.ndarray]:
    """For each generated image: d1 (nearest training image), d2 (second nearest), d1 / d2 and the
    nearest's index. Both arrays uint8 [N, C, H, W] of the same shape."""
    queries = _flat_unit_range(generated)
    d1, d2, index = [], [], []
    for start in range(0, len(queries), 512):  # bounded memory: a [512, M] distance block at a time
        distances = _mirror_aware_distances(queries[start: start + 512], training, hflip)
        if distances.shape[1] < 2:
            raise ValueError(f"the nearest-neighbour ratio needs at least 2 training images, got {distances.shape[1]}")
        values, positions = distances.topk(2, dim=1, largest=False)
        d1.append(values[:, 0])
        d2.append(values[:, 1])
        index.append(positions[:, 0])
    first, second = torch.cat(d1).numpy(), torch.cat(d2).numpy()
    ratio = np.where(second > 0, first / np.maximum(second, 1e-12), 1.0)  # two identical neighbours: no copy
    return {"d1": first, "d2": second, "ratio": ratio, "nearest": torch.cat(index).numpy()}


def memorisation(gen_images: np.ndarray, gen_labels: np.ndarray, train_images: np.ndarray, train_labels: np.ndarray,
                 groups: Mapping[str, Sequence[int]] | None = None, threshold: float = DEFAULT_THRESHOLD,
                 hflip: bool = False) -> dict[str, Any]:
    """Share of near-copies (d1 / d2 < ``threshold`` within the image's class) overall, per group
    and per class, with the median ratio and the sample counts.

    ``gen_images`` and ``train_images``: uint8 [N, C, H, W] of one shape. Classes with fewer than
    2 training images have no second neighbour and are listed under ``skipped_classes``.
    """
    gen_labels, train_labels = np.asarray(gen_labels), np.asarray(train_labels)
    if np.asarray(gen_images).shape[1:] != np.asarray(train_images).shape[1:]:
        raise ValueError(f"generated images {np.asarray(gen_images).shape[1:]} and training images "
                         f"{np.asarray(train_images).shape[1:]} differ in shape")
    ratios = np.full(len(gen_labels), np.nan)
    per_class, skipped = [], []
    for c in np.unique(gen_labels):
        gen_rows, train_rows = np.flatnonzero(gen_labels == c), np.flatnonzero(train_labels == c)
        if len(train_rows) < 2:
            skipped.append(int(c))
            continue
        found = nearest_neighbour_ratios(np.asarray(gen_images)[gen_rows], np.asarray(train_images)[train_rows], hflip)
        ratios[gen_rows] = found["ratio"]
        per_class.append({"class": int(c), "n_gen": len(gen_rows), "n_train": len(train_rows),
                          **_summary(found["ratio"], threshold)})
    measured = ~np.isnan(ratios)
    result = {"threshold": threshold, "space": "pixels", "hflip_aware": hflip,
              "overall": _summary(ratios[measured], threshold), "groups": {}, "per_class": per_class,
              "skipped_classes": skipped}
    for name, classes in (groups or {}).items():
        rows = measured & np.isin(gen_labels, list(classes))
        result["groups"][name] = _summary(ratios[rows], threshold)
    return result


def _summary(ratios: np.ndarray, threshold: float) -> dict[str, Any]:
    if len(ratios) == 0:
        return {"n": 0, "copies": 0, "copy_share": None, "median_ratio": None}
    copies = int((ratios < threshold).sum())
    return {"n": int(len(ratios)), "copies": copies, "copy_share": copies / len(ratios),
            "median_ratio": float(np.median(ratios))}


__all__ = ["DEFAULT_THRESHOLD", "memorisation", "nearest_neighbour_ratios"]
