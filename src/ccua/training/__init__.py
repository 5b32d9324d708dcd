"""Training: the loop (trainer), one step's batched passes (step), EMA, speed helpers (stop signals: ccua.stopping)."""

from __future__ import annotations

from ccua.training.trainer import Trainer, TrainingDiverged, train

__all__ = ["Trainer", "TrainingDiverged", "train"]
