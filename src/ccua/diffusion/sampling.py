"""One entry point for sampling with either objective."""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from ccua.diffusion.flow import FLOW_SAMPLERS

DDPM_SAMPLERS = ("ddim", "ddpm")

#: which samplers fit which objective (by ``objective.name``)
SAMPLERS: dict[str, tuple[str, ...]] = {"ddpm": DDPM_SAMPLERS, "flow": FLOW_SAMPLERS}


def sample_with_objective(objective, predict: Callable[[Tensor, Tensor], Tensor], noise: Tensor,
                          sampler: str, steps: int = 100, eta: float = 0.0, atol: float = 1e-6,
                          rtol: float = 1e-3, progress: bool = False, clip_x0: bool = False,
                          ddpm_variance: str = "large") -> Tensor:
    """Run ``sampler`` from the initial ``noise`` to data.

    ``predict(x, t)`` takes the model time of ``objective`` and returns the objective's
    prediction (epsilon for DDPM, velocity for flow) with guidance already applied (see
    :func:`ccua.diffusion.base.guided_prediction`). DDPM: ``ddim`` (steps, eta) or ``ddpm``
    (ancestral, all T steps, noise variance ``ddpm_variance``; ``steps`` unused), both clipping
    the predicted x0 only with ``clip_x0``. Flow: ``euler``/``heun``/``sde`` (steps) or
    ``dopri5`` (atol, rtol). ValueError for a sampler that does not fit the objective.
    """
    name = getattr(objective, "name", None)
    valid = SAMPLERS.get(name)
    if valid is None:
        raise ValueError(f"no samplers for objective {name!r} (known: {', '.join(SAMPLERS)})")
    if sampler not in valid:
        raise ValueError(f"sampler {sampler!r} does not fit the {name} objective (valid: {', '.join(valid)})")
    if name == "ddpm":
        if sampler == "ddim":
            return objective.ddim(predict, noise, steps, eta, progress, clip_x0=clip_x0)
        return objective.ancestral(predict, noise, progress, clip_x0=clip_x0, variance=ddpm_variance)
    return objective.sample(predict, noise, sampler, steps=steps, atol=atol, rtol=rtol, progress=progress)
