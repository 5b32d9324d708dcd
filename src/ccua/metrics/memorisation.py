"""Near-copies of training images: the memorisation test of Yoon et al. (2023), made invariant
to small shifts and to mirroring.

A generated image counts as a near-copy when its distance to the nearest training image is less
than ``threshold`` (1/3) times its distance to the second nearest: it sits far closer to one
training image than to any other, as a copy (or a copy up to a little noise) does, while a new
image lies between several. Distances are Euclidean in pixel space ([0, 1] values at the
training resolution) between the generated image's centre (``max_shift`` pixels cropped from
every side) and the best-matching window of the training image, its mirror included: a copy
moved by up to ``max_shift`` pixels, or mirrored, is still a copy.

Two searches are reported: among the training images of the generated image's class (the
literature's test) and among the whole training set (which also finds copies of another class's
image). Per class, the number of distinct training images that the class's samples land nearest
to shows collapse onto a few images even where no single sample passes the threshold.

CCUA's claim is tail diversity instead of copies of the few tail images: the share of near-copies
per group measures that directly (a 60-image class is far easier to copy than a 6000-image one).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

DEFAULT_THRESHOLD = 1.0 / 3.0
#: largest [query rows x training images] distance block held at once (float32 entries)
_BLOCK_ENTRIES = 2 ** 25


@dataclass(frozen=True)
class CopyTest:
    """The settings of the near-copy test; written into metrics.json beside its numbers."""

    threshold: float = DEFAULT_THRESHOLD
    max_shift: int = 2  # pixels in each direction
    mirror: bool = True


def _unit_range(images: Any) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float32 in [0, 1]."""
    return torch.as_tensor(np.ascontiguousarray(np.asarray(images))).float() / 255.0


def _windows(images: torch.Tensor, shift: int, mirror: bool) -> Iterator[torch.Tensor]:
    """Every [N, C*(H-2s)*(W-2s)] crop of ``images`` moved by up to ``shift`` pixels (and of their
    mirror images): the forms a copy may take. Made one at a time, so memory holds one."""
    sources = [images, images.flip(-1)] if mirror else [images]
    height, width = images.shape[-2:]
    for source in sources:
        for dy in range(2 * shift + 1):
            for dx in range(2 * shift + 1):
                yield source[..., dy: height - 2 * shift + dy, dx: width - 2 * shift + dx].flatten(1)


def _centres(images: torch.Tensor, shift: int) -> torch.Tensor:
    height, width = images.shape[-2:]
    if 2 * shift >= min(height, width):
        raise ValueError(f"max_shift={shift} leaves no centre of a {height}x{width} image")
    return images[..., shift: height - shift, shift: width - shift].flatten(1)


def _distance_blocks(generated: np.ndarray, training: np.ndarray,
                     test: CopyTest) -> Iterator[tuple[slice, torch.Tensor]]:
    """(rows, [rows, M] block): the distance of each generated image's centre to the best window
    (shifted by up to ``test.max_shift`` pixels, mirrored or not) of each training image, a block
    of generated images at a time (bounded memory at any data-set size)."""
    queries = _centres(_unit_range(generated), test.max_shift)
    training_t = _unit_range(training)
    rows = max(1, _BLOCK_ENTRIES // max(1, len(training_t)))
    for start in range(0, len(queries), rows):
        block = queries[start: start + rows]
        nearest = None
        for window in _windows(training_t, test.max_shift, test.mirror):
            distances = torch.cdist(block, window)
            nearest = distances if nearest is None else torch.minimum(nearest, distances)
        yield slice(start, start + len(block)), nearest


def invariant_distances(generated: np.ndarray, training: np.ndarray, test: CopyTest = CopyTest()) -> torch.Tensor:
    """[N, M]: the shift- and mirror-invariant distance of each generated image to each training
    image (uint8 [N|M, C, H, W]); whole, so for sets whose matrix fits in memory."""
    blocks = [block for _, block in _distance_blocks(generated, training, test)]
    return torch.cat(blocks) if blocks else torch.zeros(0, len(training))


def _two_nearest(distances: torch.Tensor) -> dict[str, np.ndarray]:
    """d1, d2, d1 / d2 and the nearest's column per row; rows without two finite neighbours get a
    NaN ratio."""
    if distances.shape[1] < 2:
        raise ValueError(f"the nearest-neighbour ratio needs at least 2 training images, got {distances.shape[1]}")
    values, positions = distances.topk(2, dim=1, largest=False)
    first, second = values[:, 0].numpy(), values[:, 1].numpy()
    ratio = np.where(second > 0, first / np.maximum(second, 1e-12), 1.0)  # two identical neighbours: no copy
    ratio = np.where(np.isfinite(second), ratio, np.nan)
    return {"d1": first, "d2": second, "ratio": ratio, "nearest": positions[:, 0].numpy()}


def nearest_neighbour_ratios(generated: np.ndarray, training: np.ndarray,
                             test: CopyTest = CopyTest()) -> dict[str, np.ndarray]:
    """For each generated image: d1 (nearest training image), d2 (second nearest), d1 / d2 and the
    nearest's index, with the shift- and mirror-invariant distance of ``test``."""
    return _two_nearest(invariant_distances(generated, training, test))


def _nearest_within_and_overall(gen_images: np.ndarray, gen_labels: np.ndarray, train_images: np.ndarray,
                                train_labels: np.ndarray, test: CopyTest) -> tuple[dict, dict]:
    """The two-nearest search of every generated image among its class's training images and among
    all of them, from one pass over the distance blocks."""
    within = {"ratio": np.full(len(gen_labels), np.nan), "nearest": np.full(len(gen_labels), -1)}
    whole = {"ratio": np.full(len(gen_labels), np.nan), "nearest": np.full(len(gen_labels), -1)}
    if len(train_labels) < 2:
        return within, whole
    train_labels_t = torch.as_tensor(train_labels)
    for rows, distances in _distance_blocks(gen_images, train_images, test):
        found = _two_nearest(distances)
        whole["ratio"][rows], whole["nearest"][rows] = found["ratio"], found["nearest"]
        other_class = train_labels_t[None, :] != torch.as_tensor(gen_labels[rows])[:, None]
        found = _two_nearest(distances.masked_fill(other_class, float("inf")))
        within["ratio"][rows], within["nearest"][rows] = found["ratio"], found["nearest"]
    return within, whole


def memorisation(gen_images: np.ndarray, gen_labels: np.ndarray, train_images: np.ndarray, train_labels: np.ndarray,
                 groups: Mapping[str, Sequence[int]] | None = None, test: CopyTest = CopyTest()) -> dict[str, Any]:
    """Near-copies of the training images, overall, per group and per class.

    ``overall`` / ``groups`` / ``per_class``: the test within the image's class (share of copies,
    median ratio, counts, and the distinct training images the samples land nearest to);
    ``whole_set``: the same test against every training image, with the copies whose nearest
    image is of another class. ``gen_images`` and ``train_images``: uint8 [N, C, H, W] of one
    shape. Classes with fewer than 2 training images have no second neighbour within the class
    and are listed under ``skipped_classes``.
    """
    gen_images, train_images = np.asarray(gen_images), np.asarray(train_images)
    gen_labels, train_labels = np.asarray(gen_labels), np.asarray(train_labels)
    if gen_images.shape[1:] != train_images.shape[1:]:
        raise ValueError(f"generated images {gen_images.shape[1:]} and training images "
                         f"{train_images.shape[1:]} differ in shape")
    within_found, whole_found = _nearest_within_and_overall(gen_images, gen_labels, train_images, train_labels, test)
    within, nearest_within = within_found["ratio"], within_found["nearest"]
    too_few = {int(c) for c in np.unique(gen_labels) if (train_labels == c).sum() < 2}
    within[np.isin(gen_labels, list(too_few))] = np.nan
    nearest_within[np.isnan(within)] = -1
    per_class = []
    for c in np.unique(gen_labels):
        if int(c) in too_few:
            continue
        rows = gen_labels == c
        per_class.append({"class": int(c), "n_gen": int(rows.sum()), "n_train": int((train_labels == c).sum()),
                          **_summary(within[rows], test.threshold),
                          "distinct_nearest": int(len(np.unique(nearest_within[rows])))})
    skipped = sorted(too_few)
    whole = whole_found if len(train_labels) >= 2 and len(gen_labels) else None
    result = {"test": asdict(test), "threshold": test.threshold, "space": _space(test),
              "overall": _summary(within[~np.isnan(within)], test.threshold), "groups": {},
              "per_class": per_class, "skipped_classes": skipped}
    result["overall"]["distinct_nearest"] = int(len(np.unique(nearest_within[nearest_within >= 0])))
    if whole is not None:
        other_class = train_labels[whole["nearest"]] != gen_labels
        result["whole_set"] = {"overall": _whole_summary(whole["ratio"], other_class, test.threshold), "groups": {}}
    for name, classes in (groups or {}).items():
        in_group = np.isin(gen_labels, list(classes))
        rows = in_group & ~np.isnan(within)
        result["groups"][name] = {**_summary(within[rows], test.threshold),
                                  "distinct_nearest": int(len(np.unique(nearest_within[rows]))),
                                  "n_train": int(np.isin(train_labels, list(classes)).sum())}
        if whole is not None:
            result["whole_set"]["groups"][name] = _whole_summary(whole["ratio"][in_group], other_class[in_group],
                                                                 test.threshold)
    return result


def _space(test: CopyTest) -> str:
    mirror = ", mirrored or not" if test.mirror else ""
    return f"pixels, shifts up to {test.max_shift} px{mirror}"


def _summary(ratios: np.ndarray, threshold: float) -> dict[str, Any]:
    if len(ratios) == 0:
        return {"n": 0, "copies": 0, "copy_share": None, "median_ratio": None}
    copies = int((ratios < threshold).sum())
    return {"n": int(len(ratios)), "copies": copies, "copy_share": copies / len(ratios),
            "median_ratio": float(np.median(ratios))}


def _whole_summary(ratios: np.ndarray, other_class: np.ndarray, threshold: float) -> dict[str, Any]:
    summary = _summary(ratios, threshold)
    summary["copies_of_other_class"] = int(((ratios < threshold) & other_class).sum())
    return summary


__all__ = ["DEFAULT_THRESHOLD", "CopyTest", "invariant_distances", "memorisation", "nearest_neighbour_ratios"]
