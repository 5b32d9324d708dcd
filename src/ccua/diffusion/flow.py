"""Flow matching with the linear interpolant (SiT), velocity prediction, ODE and SDE samplers.

Time convention (SPEC section 2): the network's time t runs from 0 (pure noise) to 1 (clean
data), x_t = t * data + (1 - t) * noise with noise ~ N(0, I). (``x0`` means the clean data
everywhere in ccua, as in DDPM; flow papers' x0 / x1 notation is not used.) The noise level the
methods see is s = 1 - t. Samplers integrate t from 0 to 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

from ccua.config import SampleConfig, setting
from ccua.diffusion.base import NoisedBatch, Objective, PredictFn, expand_like, gaussian_like
from ccua.progress import progress_bar


def _times(x: Tensor, value: float | Tensor) -> Tensor:
    """The model time as a float32 [B] tensor on x's device."""
    return torch.full((x.shape[0],), float(value), device=x.device, dtype=torch.float32)


def _pairs(grid: list[float]) -> list[tuple[float, float]]:
    """Consecutive (t_now, t_next) times of a sampling grid."""
    return list(zip(grid[:-1], grid[1:]))


@dataclass
class Dopri5Config:
    """``sample.dopri5.*``: the adaptive solver's absolute and relative tolerances."""

    atol: float = setting(1e-5, above=0)
    rtol: float = setting(1e-5, above=0)


class Flow(Objective):
    """Linear-interpolant flow matching: x_t = t data + (1 - t) noise, regression target
    u = data - noise.
    ``predict`` gives the velocity."""

    name = "flow"

    def noise_batch(self, x0: Tensor) -> NoisedBatch:
        """``x0`` is the clean data, as for DDPM."""
        data = x0
        t = torch.rand(data.shape[0], device=data.device)
        noise = torch.randn_like(data)
        x_t = self.interpolate(data, noise, t)
        return NoisedBatch(x0=data, noise=noise, t=t, s=1.0 - t, x_t=x_t, target=data - noise)

    @staticmethod
    def interpolate(data: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = t * data + (1 - t) * noise for times t [B]."""
        tt = expand_like(t, data)
        return tt * data + (1 - tt) * noise

    @classmethod
    def sampling_problems(cls, settings: None, sample: SampleConfig) -> Iterator[str]:
        """Clipping is DDPM's: the flow samplers integrate a velocity and have no x0 to clip."""
        if sample.clip_x0:
            yield "sample.clip_x0=true clips the DDPM samplers' predicted x0: the flow objective's samplers do not clip"

    def model_time(self, s: Tensor) -> Tensor:
        return 1.0 - s

    def noise_level(self, t: Tensor) -> Tensor:
        return 1.0 - t.float()

    # ------------------------------------------------------------------ samplers

    @torch.no_grad()
    def euler(self, predict: PredictFn, noise: Tensor, steps: int = 50, progress: bool = False) -> Tensor:
        """Explicit Euler on dx/dt = v(x, t) over ``steps`` uniform steps from t = 0 to 1."""
        _check_steps(steps)
        x = noise.float()
        grid = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64).tolist()
        for t_now, t_next in progress_bar(_pairs(grid), desc="euler", disable=not progress, leave=False):
            x = x + (t_next - t_now) * predict(x, _times(x, t_now)).float()
        return x

    @torch.no_grad()
    def heun(self, predict: PredictFn, noise: Tensor, steps: int = 50, progress: bool = False) -> Tensor:
        """Heun's second-order method (explicit trapezoid), 2 evaluations per step."""
        _check_steps(steps)
        x = noise.float()
        grid = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64).tolist()
        for t_now, t_next in progress_bar(_pairs(grid), desc="heun", disable=not progress, leave=False):
            dt = t_next - t_now
            v_now = predict(x, _times(x, t_now)).float()
            v_next = predict(x + dt * v_now, _times(x, t_next)).float()
            x = x + 0.5 * dt * (v_now + v_next)
        return x

    @torch.no_grad()
    def dopri5(self, predict: PredictFn, noise: Tensor, atol: float = 1e-6, rtol: float = 1e-3,
               progress: bool = False) -> Tensor:
        """Adaptive Dormand-Prince 5(4) through torchdiffeq (SiT's default ODE sampler and
        tolerances). The bar counts network evaluations, whose number is not known in advance."""
        odeint = _torchdiffeq_odeint()
        bar = progress_bar(desc="dopri5 (evaluations)", disable=not progress, leave=False)

        def velocity(t: Tensor, x: Tensor) -> Tensor:
            bar.update(1)
            return predict(x, _times(x, t)).float()

        try:
            span = torch.tensor([0.0, 1.0], device=noise.device, dtype=torch.float32)
            return odeint(velocity, noise.float(), span, method="dopri5", atol=atol, rtol=rtol)[-1]
        finally:
            bar.close()

    @torch.no_grad()
    def sde(self, predict: PredictFn, noise: Tensor, steps: int = 250, diffusion_norm: float = 1.0,
            last_step_size: float = 0.04, progress: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """Euler-Maruyama on a reverse-time SDE with the interpolant's marginals, then one
        deterministic step.

        For a diffusion coefficient D(t) >= 0, dx = [v + D * score] dt + sqrt(2 D) dW has the same
        marginals p_t as the ODE dx = v dt (the noise's spreading, D times the Laplacian in the
        Fokker-Planck equation, is undone by the extra drift D * score). For the linear
        interpolant the score follows from the velocity: E[noise | x_t] = x_t - t v, and
        score = -E[noise | x_t] / (1 - t) = (t v - x_t) / (1 - t).

        D(t) = diffusion_norm * (1 - t), SiT's default "sigma" form (sigma_t = 1 - t), with norm 1:
        most noise where the sample is noisiest, none at the data. With it D * score =
        diffusion_norm * (t v - x_t) has no 1 / (1 - t), so the drift is finite up to t = 1.

        ``steps`` stochastic steps cover [0, 1 - last_step_size] (SiT's default split, 0.04);
        the last stretch is one Heun step of the probability-flow ODE dx = v dt, so the output
        carries no fresh noise. SiT's "Mean" last step instead takes the SDE drift without its
        noise; as the drift's D * score part is a contraction that only the noise balances, that
        leaves the variance short (by 2% on a Gaussian test), while the ODE step keeps the
        marginals. Network evaluations: steps + 2. The Brownian increments come from ``generator``
        (torch's global generator without).
        """
        _check_steps(steps)
        if not 0 < last_step_size < 1:
            raise ValueError(f"last_step_size must be in (0, 1), got {last_step_size}")
        x = noise.float()
        end = 1.0 - last_step_size
        grid = torch.linspace(0.0, end, steps + 1, dtype=torch.float64).tolist()

        def drift(x: Tensor, t: float) -> Tensor:
            v = predict(x, _times(x, t)).float()
            return v + diffusion_norm * (t * v - x)

        for t_now, t_next in progress_bar(_pairs(grid), desc="sde", disable=not progress, leave=False):
            dt = t_next - t_now
            diffusion = diffusion_norm * (1.0 - t_now)
            x = x + dt * drift(x, t_now) + (2.0 * diffusion * dt) ** 0.5 * gaussian_like(x, generator)
        v_end = predict(x, _times(x, end)).float()
        v_data = predict(x + last_step_size * v_end, _times(x, 1.0)).float()
        return x + 0.5 * last_step_size * (v_end + v_data)

    # ------------------------------------------------------------------ samplers by name

    # The ODE samplers are deterministic: they take the generator of the per-step noise and leave it.
    def _run_euler(self, predict: PredictFn, noise: Tensor, settings: SampleConfig, progress: bool,
                   generator: torch.Generator | None) -> Tensor:
        return self.euler(predict, noise, settings.steps, progress=progress)

    def _run_heun(self, predict: PredictFn, noise: Tensor, settings: SampleConfig, progress: bool,
                  generator: torch.Generator | None) -> Tensor:
        return self.heun(predict, noise, settings.steps, progress=progress)

    def _run_dopri5(self, predict: PredictFn, noise: Tensor, settings: SampleConfig, progress: bool,
                    generator: torch.Generator | None) -> Tensor:
        return self.dopri5(predict, noise, atol=settings.dopri5.atol, rtol=settings.dopri5.rtol, progress=progress)

    def _run_sde(self, predict: PredictFn, noise: Tensor, settings: SampleConfig, progress: bool,
                 generator: torch.Generator | None) -> Tensor:
        return self.sde(predict, noise, settings.steps, progress=progress, generator=generator)

    #: ``sample.sampler`` -> how it runs: euler, heun, sde (``steps``) or dopri5 (``sample.dopri5.atol``, ``rtol``)
    samplers = {"euler": _run_euler, "heun": _run_heun, "dopri5": _run_dopri5, "sde": _run_sde}
    sampler_settings = {"dopri5": Dopri5Config}


def _check_steps(steps: int) -> None:
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")


def _torchdiffeq_odeint():
    """torchdiffeq's odeint, imported only when an adaptive sampler is asked for."""
    try:
        from torchdiffeq import odeint
    except ImportError as err:
        raise ImportError("the dopri5 sampler needs torchdiffeq: pip install torchdiffeq "
                          "(or use sampler euler, heun or sde)") from err
    return odeint
