"""Training objectives (DDPM epsilon, flow velocity), each with its own samplers.

``OBJECTIVES`` is the registry of ``diffusion.objective`` names; each objective's ``samplers``
mapping is the registry of the ``sample.sampler`` names it offers.
"""

from __future__ import annotations

from ccua.diffusion.base import (LABEL_DROP_MODES, NoisedBatch, Objective, drop_labels, guided_prediction,
                                 per_sample_mse)
from ccua.diffusion.ddpm import DDPM
from ccua.diffusion.flow import Flow

#: ``diffusion.objective`` -> the objective class
OBJECTIVES: dict[str, type[Objective]] = {"ddpm": DDPM, "flow": Flow}
#: every ``sample.sampler`` name, objective by objective (each objective's ``samplers`` owns its own)
SAMPLERS: tuple[str, ...] = tuple(name for objective in OBJECTIVES.values() for name in objective.samplers)

__all__ = ["DDPM", "Flow", "LABEL_DROP_MODES", "NoisedBatch", "OBJECTIVES", "Objective", "SAMPLERS", "drop_labels",
           "guided_prediction", "per_sample_mse"]
