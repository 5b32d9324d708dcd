"""Training objectives (DDPM epsilon, flow velocity), each with its own samplers.

``OBJECTIVES`` is the registry of ``diffusion.objective`` names (:func:`register_objective`, which
also gives an objective's own settings their section ``diffusion.<name>``); each objective's
``samplers`` mapping is the registry of the ``sample.sampler`` names it offers. A new sampler is a
function in a module of its own and one :func:`register_sampler` line.
"""

from __future__ import annotations

from ccua.config import register_settings
from ccua.diffusion.base import (LABEL_DROP_MODES, NoisedBatch, Objective, SamplerFn, drop_labels, guided_prediction,
                                 per_sample_mse)
from ccua.diffusion.ddpm import DDPM, DDPMConfig
from ccua.diffusion.flow import Flow

#: ``diffusion.objective`` -> the objective class
OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(objective: type[Objective]) -> None:
    """Make ``diffusion.objective=<objective.name>`` train with ``objective``; its ``settings``
    dataclass, where it has one, becomes the config section ``diffusion.<name>``, and each of its
    ``sampler_settings`` the section ``sample.<sampler>``."""
    OBJECTIVES[objective.name] = objective
    if objective.settings is not None:
        register_settings("diffusion", objective.name, objective.settings)
    for sampler, settings in objective.sampler_settings.items():
        register_settings("sample", sampler, settings)


register_objective(DDPM)
register_objective(Flow)


def register_sampler(objective: type[Objective], name: str, run: SamplerFn, settings: type | None = None) -> None:
    """Offer sampler ``name`` (``sample.sampler=<name>``, ``--sampler <name>``) for ``objective``.

    ``run(objective, predict, noise, sample, progress, generator)`` returns the samples (see
    :meth:`Objective.sample`); ``settings``, a dataclass declared with :func:`ccua.config.setting`,
    becomes the config section ``sample.<name>``, which ``run`` reads as ``sample.<name>``.
    """
    if any(name in other.samplers for other in OBJECTIVES.values()):
        raise ValueError(f"a sampler named {name!r} is already registered")
    objective.samplers = {**objective.samplers, name: run}  # the class's own mapping, not its base's
    if settings is not None:
        objective.sampler_settings = {**objective.sampler_settings, name: settings}
        register_settings("sample", name, settings)


def sampler_names() -> tuple[str, ...]:
    """Every ``sample.sampler`` name, objective by objective (each objective's ``samplers`` owns its own)."""
    return tuple(name for objective in OBJECTIVES.values() for name in objective.samplers)


__all__ = ["DDPM", "DDPMConfig", "Flow", "LABEL_DROP_MODES", "NoisedBatch", "OBJECTIVES", "Objective", "drop_labels",
           "guided_prediction", "per_sample_mse", "register_objective", "register_sampler",
           "sampler_names"]
