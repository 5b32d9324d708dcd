"""Training objectives (DDPM epsilon, flow velocity) and their samplers."""

from __future__ import annotations

from ccua.config import DiffusionConfig
from ccua.diffusion.base import NoisedBatch, Objective, guided_prediction, per_sample_mse
from ccua.diffusion.ddpm import DDPM
from ccua.diffusion.flow import Flow
from ccua.diffusion.sampling import sample_with_objective


def build_objective(config: DiffusionConfig):
    """The objective named by ``config.objective``."""
    if config.objective == "ddpm":
        return DDPM(config.timesteps, config.beta_start, config.beta_end)
    if config.objective == "flow":
        return Flow()
    raise ValueError(f"unknown diffusion.objective {config.objective!r}")


__all__ = ["DDPM", "Flow", "NoisedBatch", "Objective", "build_objective", "guided_prediction", "per_sample_mse",
           "sample_with_objective"]
