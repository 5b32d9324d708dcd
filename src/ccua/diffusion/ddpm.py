"""DDPM: linear beta schedule, epsilon prediction, DDIM and ancestral samplers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

from ccua.config import SampleConfig, setting
from ccua.diffusion.base import NoisedBatch, Objective, PredictFn, expand_like, gaussian_like
from ccua.diffusion.solvers import SOLVERS, solver_runner
from ccua.progress import progress_bar

#: the ancestral sampler's noise variance: beta_t (released, default) or the posterior's beta-tilde_t
ANCESTRAL_VARIANCES = ("large", "posterior")


@dataclass
class DDPMConfig:
    """DDPM's noise schedule (``diffusion.ddpm.*``): T steps of betas linear from start to end."""

    timesteps: int = setting(1000, at_least=1, meaning="DDPM steps T")
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def problems(self) -> Iterator[str]:
        if not 0 < self.beta_start <= self.beta_end < 1:
            yield (f"diffusion.ddpm.beta_start={self.beta_start}, beta_end={self.beta_end}: "
                   "need 0 < beta_start <= beta_end < 1")


@dataclass
class DDIMConfig:
    """``sample.ddim.*``: eta = 0 is deterministic DDIM, 1 draws fresh noise at every step as the
    ancestral sampler does."""

    eta: float = setting(0.0, at_least=0, at_most=1)


@dataclass
class AncestralConfig:
    """``sample.ddpm.*``: the ancestral sampler's noise variance, ``large`` = beta_t (the released
    U-Net code's fixedlarge, the default) or ``posterior`` = beta-tilde_t."""

    variance: str = setting("large", choices=ANCESTRAL_VARIANCES)


class DDPM(Objective):
    """Discrete-time DDPM with T steps; time t = 0 .. T-1, large t = noisy. ``predict`` gives epsilon."""

    name = "ddpm"
    settings = DDPMConfig

    def __init__(self, timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        self.timesteps = timesteps
        betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)

    @classmethod
    def from_config(cls, settings: DDPMConfig | None = None) -> "DDPM":
        """T steps of the linear schedule from ``beta_start`` to ``beta_end``."""
        settings = settings or DDPMConfig()
        return cls(settings.timesteps, settings.beta_start, settings.beta_end)

    @classmethod
    def sampling_problems(cls, settings: DDPMConfig, sample: SampleConfig) -> Iterator[str]:
        """DDIM and the few-step solvers take at most T steps; only DDIM and ancestral sampling clip x0."""
        if sample.sampler in ("ddim", *SOLVERS) and sample.steps > settings.timesteps:
            yield f"sample.steps={sample.steps} exceeds diffusion.ddpm.timesteps={settings.timesteps}"
        if sample.clip_x0 and sample.sampler in SOLVERS:
            yield f"sample.clip_x0=true is not applied by the {sample.sampler} solver: use ddim or ddpm to clip"

    def alpha_bar(self, t: Tensor) -> Tensor:
        """alphabar_t for integer timesteps t (float32, on t's device)."""
        return self.alphas_cumprod.to(t.device)[t.long()].float()

    def noise_batch(self, x0: Tensor) -> NoisedBatch:
        t = torch.randint(0, self.timesteps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        x_t = self.q_sample(x0, t, noise)
        return NoisedBatch(x0=x0, noise=noise, t=t, s=self.noise_level(t), x_t=x_t, target=noise)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        ab = expand_like(self.alpha_bar(t), x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def epsilon_target(self, x_t: Tensor, x0: Tensor, t: Tensor) -> Tensor:
        """The epsilon that turns x0 into x_t at time t (used when a method swaps x0)."""
        ab = expand_like(self.alpha_bar(t), x_t)
        return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()

    def noise_level(self, t: Tensor) -> Tensor:
        return t.float() / self.timesteps

    def model_time(self, s: Tensor) -> Tensor:
        return (s * self.timesteps).round().long().clamp(0, self.timesteps - 1)

    def sample_times(self, steps: int) -> list[int]:
        """Evenly spaced timesteps, from noisy to clean, as the DDIM release does."""
        if not 1 <= steps <= self.timesteps:
            raise ValueError(f"steps must be in [1, {self.timesteps}], got {steps}")
        stride = self.timesteps // steps
        return list(range(0, stride * steps, stride))[::-1]

    @torch.no_grad()
    def ddim(self, predict: PredictFn, noise: Tensor, steps: int = 100, eta: float = 0.0,
             progress: bool = False, clip_x0: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """DDIM (eta = 0: deterministic) from the given initial noise to x_0.

        Each step moves to x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z,
        with x0 and eps the two readings of the same prediction. ``clip_x0`` clips x0 to [-1, 1]
        and re-derives eps from the clipped x0, so both terms still describe one x_t; without it
        (the released sampler) nothing is clipped. With eta > 0 the fresh noise z comes from
        ``generator`` (torch's global generator without).
        """
        x = noise
        times = self.sample_times(steps)
        for i, t_now in enumerate(progress_bar(times, desc="ddim", disable=not progress, leave=False)):
            t_prev = times[i + 1] if i + 1 < len(times) else -1
            t = torch.full((x.shape[0],), t_now, device=x.device, dtype=torch.long)
            eps = predict(x, t).float()
            ab = self.alphas_cumprod[t_now].item()
            ab_prev = self.alphas_cumprod[t_prev].item() if t_prev >= 0 else 1.0
            x0_pred = self._x0_from_eps(x, eps, ab)
            if clip_x0:
                x0_pred = x0_pred.clamp(-1, 1)
                eps = self._eps_from_x0(x, x0_pred, ab)
            sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)) ** 0.5
            direction = (max(1 - ab_prev - sigma**2, 0.0)) ** 0.5 * eps
            x = ab_prev**0.5 * x0_pred + direction
            if sigma > 0:
                x = x + sigma * gaussian_like(x, generator)
        return x

    @torch.no_grad()
    def ancestral(self, predict: PredictFn, noise: Tensor, progress: bool = False, clip_x0: bool = False,
                  variance: str = "large", generator: torch.Generator | None = None) -> Tensor:
        """DDPM ancestral sampling over all T steps: the posterior mean of q(x_{t-1} | x_t, x0) at
        the predicted x0, plus noise of variance ``large`` = beta_t (the released U-Net samplers'
        "fixedlarge", the default) or ``posterior`` = beta-tilde_t = beta_t (1 - ab_prev) / (1 - ab).
        Ho et al. report both give similar sample quality; beta_t is what published numbers of the
        released code used. ``clip_x0`` clips the predicted x0 to [-1, 1] before taking the mean.
        The noise comes from ``generator`` (torch's global generator without).
        """
        if variance not in ANCESTRAL_VARIANCES:
            raise ValueError(f"variance {variance!r} is not one of: {', '.join(ANCESTRAL_VARIANCES)}")
        x = noise
        times = range(self.timesteps - 1, -1, -1)
        for t_now in progress_bar(times, desc="ddpm", disable=not progress, leave=False):
            t = torch.full((x.shape[0],), t_now, device=x.device, dtype=torch.long)
            eps = predict(x, t).float()
            ab = self.alphas_cumprod[t_now].item()
            ab_prev = self.alphas_cumprod[t_now - 1].item() if t_now > 0 else 1.0
            beta = self.betas[t_now].item()
            x0_pred = self._x0_from_eps(x, eps, ab)
            if clip_x0:
                x0_pred = x0_pred.clamp(-1, 1)
            mean = (ab_prev**0.5 * beta / (1 - ab)) * x0_pred + ((1 - beta) ** 0.5 * (1 - ab_prev) / (1 - ab)) * x
            if t_now > 0:
                var = beta if variance == "large" else beta * (1 - ab_prev) / (1 - ab)
                x = mean + var**0.5 * gaussian_like(x, generator)
            else:
                x = mean
        return x

    def _x0_from_eps(self, x: Tensor, eps: Tensor, alpha_bar: float) -> Tensor:
        return (x - (1 - alpha_bar) ** 0.5 * eps) / alpha_bar**0.5

    def _eps_from_x0(self, x: Tensor, x0: Tensor, alpha_bar: float) -> Tensor:
        return (x - alpha_bar**0.5 * x0) / (1 - alpha_bar) ** 0.5

    # ------------------------------------------------------------------ samplers by name

    def _run_ddim(self, predict: PredictFn, noise: Tensor, settings: SampleConfig, progress: bool,
                  generator: torch.Generator | None) -> Tensor:
        return self.ddim(predict, noise, settings.steps, settings.ddim.eta, progress, clip_x0=settings.clip_x0,
                         generator=generator)

    def _run_ancestral(self, predict: PredictFn, noise: Tensor, settings: SampleConfig, progress: bool,
                       generator: torch.Generator | None) -> Tensor:
        return self.ancestral(predict, noise, progress, clip_x0=settings.clip_x0, variance=settings.ddpm.variance,
                              generator=generator)

    #: ``sample.sampler`` -> how it runs: ddim (steps, ``sample.ddim.eta``) or ddpm (ancestral over
    #: all T steps, ``sample.ddpm.variance``; ``steps`` unused), both clipping the predicted x0 only
    #: with ``clip_x0``; and the few-step solvers of :data:`ccua.diffusion.solvers.SOLVERS`
    #: (DPM-Solver++ 2M, UniPC) in ``steps`` steps
    samplers = {"ddim": _run_ddim, "ddpm": _run_ancestral, **{name: solver_runner(name) for name in SOLVERS}}
    #: the samplers' own settings: the sections ``sample.ddim`` and ``sample.ddpm``
    sampler_settings = {"ddim": DDIMConfig, "ddpm": AncestralConfig}
