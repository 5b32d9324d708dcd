"""Training: the step, the loop, checkpoints, EMA and distributed helpers."""

from __future__ import annotations

__all__ = ["Trainer", "TrainingDiverged", "train"]


def __getattr__(name: str):
    # Imported lazily: sampling needs training.checkpoint, and the trainer needs sampling.
    if name in __all__:
        from ccua.training import trainer

        return getattr(trainer, name)
    raise AttributeError(name)
