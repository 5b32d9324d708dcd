"""The Python API: a trained run to sample from, and scores of any images, in a few lines.

    import ccua

    run = ccua.load_run("runs/demo/000-fashion_mnist_lt_ccua")        # or a checkpoint file
    images = run.sample([7, 8, 9] * 4, sampler="dpm++", steps=20, guidance=1.0, seed=0)
    scores = ccua.evaluate_samples(images, [7, 8, 9] * 4, data="fashion_mnist_lt", features="classifier")
    scores.fid, scores.groups["tail"].recall, scores.copies["tail"]

Everything the command line does with these is the same code (``ccua sample`` / ``ccua evaluate``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ccua.build import load_checked_config
from ccua.config import Config, DataConfig, sample_settings_changes
from ccua.generate import LoadedModel
from ccua.metrics.subset_metrics import CLASS_ACCURACY, FID, KID, PRECISION, RECALL


class TrainedRun:
    """A trained model restored from a run folder or checkpoint (:func:`load_run`)."""

    def __init__(self, loaded: LoadedModel):
        self._loaded = loaded

    @property
    def model(self) -> nn.Module:
        """The backbone (EMA weights unless loaded with ``ema=False``), in eval mode."""
        return self._loaded.model

    @property
    def config(self) -> Config:
        """The settings the run was trained with."""
        return self._loaded.config

    @property
    def step(self) -> int:
        return self._loaded.step

    @property
    def class_counts(self) -> list[int]:
        """Training images per class (the long-tailed profile the run saw)."""
        return list(self._loaded.class_counts)

    @property
    def checkpoint(self) -> Path:
        return self._loaded.checkpoint_path

    def sample(self, labels: Sequence[int] | torch.Tensor, *, sampler: str | None = None, steps: int | None = None,
               guidance: float | None = None, seed: int = 0, **sample_settings: Any) -> np.ndarray:
        """uint8 [N, H, W, C] images, one per label. ``sampler``, ``steps``, ``guidance`` and any other
        ``sample.*`` setting (``clip_x0=True``, a sampler's own as a mapping: ``ddim={"eta": 1.0}``)
        replace the run's; sample i's initial noise depends only on (seed, i), as on the command line."""
        changes = {k: v for k, v in {"sampler": sampler, "steps": steps, "guidance": guidance}.items()
                   if v is not None}
        changes = sample_settings_changes({**changes, **sample_settings}, "TrainedRun.sample")
        settings = self._loaded.sample_settings(changes)
        labels = torch.as_tensor(labels, dtype=torch.long).flatten()
        if labels.numel() and (labels.min() < 0 or labels.max() >= len(self.class_counts)):
            raise ValueError(f"labels must be in [0, {len(self.class_counts) - 1}]")
        return self._loaded.sample_uint8(labels, settings, seed=seed, progress=False)


def load_run(path_or_checkpoint: str | Path, ema: bool = True, device: str | torch.device | None = None) -> TrainedRun:
    """The newest checkpoint of a run folder, or the checkpoint file given, ready to sample."""
    from ccua.devices import default_device

    return TrainedRun(LoadedModel(path_or_checkpoint, use_ema=ema, device=default_device(device)))


@dataclass(frozen=True)
class GroupScores:
    """The scores of one subset of the images (overall, a head/body/tail group, or a class)."""

    n_generated: int
    n_reference: int | None
    fid: float | None
    kid: float | None
    precision: float | None
    recall: float | None
    class_accuracy: float | None

    @classmethod
    def of(cls, row: dict[str, Any]) -> "GroupScores":
        return cls(row.get("n_gen"), row.get("n_ref"), *(row.get(column.key) for column in
                                                          (FID, KID, PRECISION, RECALL, CLASS_ACCURACY)))


@dataclass(frozen=True)
class Scores:
    """What :func:`evaluate_samples` measured. ``copies``: the near-copy share of the training
    images per group (within the class); ``raw``: everything, as metrics.json holds it."""

    overall: GroupScores
    groups: dict[str, GroupScores]
    per_class: dict[int, GroupScores]
    inception_score: float | None
    copies: dict[str, float | None] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def fid(self) -> float | None:
        return self.overall.fid


def evaluate_samples(images: np.ndarray | torch.Tensor, labels: Sequence[int] | np.ndarray, *,
                     data: str | Path | DataConfig, features: str = "inception", feature_path: str | None = None,
                     reference: str = "train", max_reference: int | None = None, memorisation: bool = True,
                     device: str | None = None) -> Scores:
    """Score uint8 images (NHWC, NCHW or grey NHW) with their classes against the balanced
    ``reference`` split of ``data`` (a preset name, a YAML config, or a DataConfig): FID, KID,
    precision/recall, class accuracy, overall, per head/body/tail group and per class, and the
    near-copies of ``data``'s long-tailed training images."""
    from ccua.evaluation import score_images

    if not isinstance(data, DataConfig):
        data = load_checked_config(str(data)).data
    result = score_images(np.asarray(images), np.asarray(labels), data, features=features,
                          feature_path=feature_path, reference_split=reference, max_reference=max_reference,
                          memorisation=memorisation, device=device)
    copies = result.get("memorisation") or {}
    return Scores(
        overall=GroupScores.of(result["overall"]),
        groups={name: GroupScores.of(row) for name, row in result["groups"].items()},
        per_class={row["class"]: GroupScores.of(row) for row in result["per_class"]},
        inception_score=result["overall"].get("inception_score_mean"),
        copies={name: row.get("copy_share") for name, row in (copies.get("groups") or {}).items()},
        raw=result)


__all__ = ["GroupScores", "Scores", "TrainedRun", "evaluate_samples", "load_run"]
