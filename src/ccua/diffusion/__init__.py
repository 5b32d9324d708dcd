"""Training objectives (DDPM epsilon, flow velocity), each with its own samplers.

``OBJECTIVES`` is the registry of ``diffusion.objective`` names; each objective's ``samplers``
mapping is the registry of the ``sample.sampler`` names it offers.
"""

from __future__ import annotations

from ccua.config import DiffusionConfig
from ccua.diffusion.base import NoisedBatch, Objective, guided_prediction, per_sample_mse
from ccua.diffusion.ddpm import DDPM
from ccua.diffusion.flow import Flow

#: ``diffusion.objective`` -> the objective class
OBJECTIVES: dict[str, type[Objective]] = {"ddpm": DDPM, "flow": Flow}


def build_objective(config: DiffusionConfig) -> Objective:
    """The objective named by ``config.objective``."""
    if config.objective == "ddpm":
        return DDPM(config.timesteps, config.beta_start, config.beta_end)
    if config.objective == "flow":
        return Flow()
    raise ValueError(f"unknown diffusion.objective {config.objective!r}")


__all__ = ["DDPM", "Flow", "NoisedBatch", "OBJECTIVES", "Objective", "build_objective", "guided_prediction",
           "per_sample_mse"]
