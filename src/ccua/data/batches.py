"""Deterministic, resumable batch order for one or many processes.

The global stream of indices is a concatenation of "epochs", each a seeded permutation of the
data set (or, with class-balanced resampling, N seeded draws). Global batch k is the slice
[k B, (k + 1) B) of that stream and process r takes its r-th share, so the order depends only on
(seed, step): resuming at step k reproduces exactly the batches an uninterrupted run would see.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from ccua.data.longtail import balanced_class_probabilities


class ResumableBatchSampler(Sampler[list[int]]):
    """Yields the per-process index lists of global batches start_step, start_step + 1, ..."""

    def __init__(self, labels: np.ndarray, num_classes: int, global_batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, start_step: int = 0, balanced_rho: float | None = None):
        if global_batch_size % world_size:
            raise ValueError(f"batch size {global_batch_size} is not divisible by {world_size} processes")
        self.labels = np.asarray(labels)
        self.size = len(self.labels)
        if self.size == 0:
            raise ValueError("the training set is empty")
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // world_size
        self.seed = seed
        self.rank = rank
        self.start_step = start_step
        self.balanced_rho = balanced_rho
        self._class_members = [np.flatnonzero(self.labels == c) for c in range(num_classes)]
        # Classes are ranked head to tail by their training counts, not by index (split files and
        # image folders list classes in no order of frequency).
        counts = [len(members) for members in self._class_members]
        self._class_probs = (balanced_class_probabilities(num_classes, balanced_rho, counts)
                             if balanced_rho is not None else None)
        self._epoch_cache: dict[int, np.ndarray] = {}

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The indices of one pass of the stream (N long)."""
        if epoch not in self._epoch_cache:
            rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
            if self._class_probs is None:
                order = rng.permutation(self.size)
            else:
                # Draw a class with the balanced probabilities, then an image uniformly within it.
                classes = rng.choice(len(self._class_probs), size=self.size, p=self._class_probs)
                order = np.empty(self.size, dtype=np.int64)
                for c, members in enumerate(self._class_members):
                    picked = classes == c
                    if picked.any():
                        order[picked] = members[rng.integers(0, len(members), picked.sum())]
            self._epoch_cache = {epoch: order}  # keep one epoch: the stream only moves forward
        return self._epoch_cache[epoch]

    def global_batch(self, step: int) -> np.ndarray:
        start = step * self.global_batch_size
        out = []
        while len(out) < self.global_batch_size:
            epoch, offset = divmod(start + len(out), self.size)
            take = min(self.size - offset, self.global_batch_size - len(out))
            out.extend(self.epoch_order(epoch)[offset: offset + take].tolist())
        return np.asarray(out)

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while True:
            batch = self.global_batch(step)
            yield batch[self.rank * self.local_batch_size: (self.rank + 1) * self.local_batch_size].tolist()
            step += 1

    def __len__(self) -> int:  # an infinite stream; DataLoader only needs this for len()
        return 2**62


def batch_generator_seed(seed: int, rank: int) -> int:
    """Rank-aware seed for noise, times and label dropout, so processes draw different noise."""
    return seed * 1000 + rank


def seed_everything(seed: int) -> None:
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
