"""Where a run's numbers and sample grids go besides ``losses.jsonl``: TensorBoard (the default)
and, when asked (``train.report_to: [tensorboard, wandb]``), Weights & Biases. W&B is optional:
never imported unless named, never required; its run id is fixed by the run folder, so a resumed
run continues the same W&B run."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any, Iterator

import numpy as np

#: ``train.report_to`` names
REPORTERS = ("tensorboard", "wandb")


def reporter_problems(names: list[str]) -> Iterator[str]:
    """Unknown reporter names, and W&B asked for but not installed."""
    for name in names:
        if name not in REPORTERS:
            yield f"train.report_to: unknown reporter {name!r} (valid: {', '.join(REPORTERS)})"
    if "wandb" in names and importlib.util.find_spec("wandb") is None:
        yield "train.report_to names wandb, which is not installed: pip install wandb (or drop it from the list)"


class Reporters:
    """The chosen reporters of one run (process 0 only)."""

    def __init__(self, names: list[str], run_dir: Path, config: dict[str, Any], step: int, project: str):
        self.tensorboard = self.wandb = None
        if "tensorboard" in names:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a killed launch logged past the step this one starts from
            self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"), purge_step=step)
        if "wandb" in names:
            import wandb

            run_id = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]
            self.wandb = wandb.init(project=project, name=run_dir.name, id=run_id, resume="allow", dir=str(run_dir),
                                    config=config)

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Named scalars (``loss/dm``, ``train/lr``, ...) of ``step``."""
        if self.tensorboard is not None:
            for tag, value in values.items():
                self.tensorboard.add_scalar(tag, value, step)
        if self.wandb is not None:
            self.wandb.log(dict(values), step=step)

    def image(self, tag: str, pixels: np.ndarray, step: int) -> None:
        """An HWC uint8 image (a sample grid)."""
        if self.tensorboard is not None:
            self.tensorboard.add_image(tag, pixels, step, dataformats="HWC")
        if self.wandb is not None:
            import wandb

            self.wandb.log({tag: wandb.Image(pixels)}, step=step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()
