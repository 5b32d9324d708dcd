"""Flow objective and its samplers, checked against a Gaussian whose velocity field is exact.

For data x1 ~ N(mu, sigma^2) (per element), x0 ~ N(0, 1) and x_t = t x1 + (1 - t) x0, x_t is
Gaussian with mean t mu and variance V_t = t^2 sigma^2 + (1 - t)^2, jointly Gaussian with
u = x1 - x0 (mean mu, Cov(u, x_t) = t sigma^2 - (1 - t)). So the velocity E[u | x_t = x] is affine:
    v(x, t) = mu + (t sigma^2 - (1 - t)) / V_t * (x - t mu).
Its ODE flow map is affine and carries N(0, 1) onto N(t mu, V_t), so at t = 1 it sends the noise z
exactly to mu + sigma z: ODE samplers can be checked pointwise, not only by their moments.
"""

from __future__ import annotations

import sys

import pytest
import torch

from ccua.config import DiffusionConfig
from ccua.config import SampleConfig
from ccua.diffusion.flow import Dopri5Config
from ccua.build import build_objective
from ccua.diffusion import DDPM, Flow, guided_prediction
from ccua.models.dit import DiT

MU, SIGMA = 1.5, 0.5


def exact_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    tt = t.double().reshape(-1, *([1] * (x.dim() - 1)))
    var = tt**2 * SIGMA**2 + (1 - tt) ** 2
    return (MU + (tt * SIGMA**2 - (1 - tt)) / var * (x.double() - tt * MU)).float()


@pytest.fixture
def noise() -> torch.Tensor:
    return torch.randn(512, 2, 4, 4, generator=torch.Generator().manual_seed(0))  # 16,384 values


def max_error(out: torch.Tensor, noise: torch.Tensor) -> float:
    return (out - (MU + SIGMA * noise)).abs().max().item()


def test_noise_batch_closed_form():
    flow = Flow()
    data = torch.randn(16, 3, 4, 4)
    torch.manual_seed(5)
    batch = flow.noise_batch(data)
    assert flow.name == "flow"
    assert batch.t.shape == (16,) and batch.t.dtype == torch.float32
    assert ((batch.t >= 0) & (batch.t < 1)).all()
    t = batch.t[:, None, None, None]
    torch.testing.assert_close(batch.x_t, t * data + (1 - t) * batch.noise)
    torch.testing.assert_close(batch.target, data - batch.noise)
    torch.testing.assert_close(batch.s, 1 - batch.t)
    assert batch.x0 is data
    torch.testing.assert_close(flow.model_time(batch.s), batch.t)
    # t and noise come from torch's global generator: a seed reproduces the batch
    torch.manual_seed(5)
    again = flow.noise_batch(data)
    assert torch.equal(again.t, batch.t) and torch.equal(again.noise, batch.noise)
    # the endpoints of the interpolant
    ones, zeros = torch.ones(16), torch.zeros(16)
    torch.testing.assert_close(flow.interpolate(data, batch.noise, ones), data)
    torch.testing.assert_close(flow.interpolate(data, batch.noise, zeros), batch.noise)


def test_build_objective_flow():
    assert isinstance(build_objective(DiffusionConfig(objective="flow")), Flow)


def test_exact_velocity_is_the_regression_optimum():
    """Check the closed form itself: at fixed t, least squares of u on x_t gives its slope and intercept."""
    gen = torch.Generator().manual_seed(1)
    n = 200_000
    for t_value in (0.0, 0.3, 0.8):
        x1 = MU + SIGMA * torch.randn(n, generator=gen, dtype=torch.float64)
        x0 = torch.randn(n, generator=gen, dtype=torch.float64)
        x_t, u = t_value * x1 + (1 - t_value) * x0, x1 - x0
        design = torch.stack([torch.ones(n, dtype=torch.float64), x_t], dim=1)
        fitted = torch.linalg.lstsq(design, u[:, None]).solution[:, 0]
        at = torch.tensor([0.0, 1.0])
        pred = exact_velocity(at, torch.full((2,), t_value))
        closed = torch.tensor([pred[0], pred[1] - pred[0]], dtype=torch.float64)  # intercept, slope
        # standard errors of the fit are ~ 1/sqrt(n) = 0.002
        torch.testing.assert_close(fitted, closed, atol=0.015, rtol=0)


def test_euler_converges_at_first_order(noise):
    flow = Flow()
    errors = [max_error(flow.euler(exact_velocity, noise, steps), noise) for steps in (100, 200, 500)]
    # local error O(dt^2) summed over 1/dt steps: global O(dt), about 3/steps here
    assert errors[2] < 0.01
    assert 1.8 < errors[0] / errors[1] < 2.2


def test_heun_converges_at_second_order(noise):
    flow = Flow()
    errors = [max_error(flow.heun(exact_velocity, noise, steps), noise) for steps in (20, 40)]
    assert errors[1] < 1e-3  # about 1 / steps^2
    assert 3.5 < errors[0] / errors[1] < 4.5


def test_dopri5_reaches_its_tolerance(noise):
    out = Flow().dopri5(exact_velocity, noise, atol=1e-7, rtol=1e-7)
    assert max_error(out, noise) < 1e-4  # float32 arithmetic limits it to ~1e-6


@pytest.mark.parametrize("sampler,steps", [("euler", 500), ("heun", 50), ("dopri5", 1)])
def test_ode_samples_have_the_data_moments(noise, sampler, steps):
    tight = {"dopri5": Dopri5Config(atol=1e-7, rtol=1e-7)}
    out = Flow().sample(exact_velocity, noise, SampleConfig(sampler=sampler, steps=steps, sections=tight))
    # The sample moments differ from mu, sigma^2 by the noise's own sampling error
    # (sd sigma / sqrt(n) = 0.004 for the mean, sigma^2 sqrt(2 / n) = 0.003 for the variance)
    # plus the integration error (< 0.01 for Euler with 500 steps).
    assert abs(out.mean().item() - MU) < 0.03
    assert abs(out.var().item() - SIGMA**2) < 0.03
    # ...and agree with the moments of the exactly transported noise much more closely
    assert abs(out.mean().item() - (MU + SIGMA * noise.mean()).item()) < 0.01
    assert abs(out.std().item() - SIGMA * noise.std().item()) < 0.01


def test_sde_samples_have_the_data_moments():
    noise = torch.randn(8000, 4, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)  # the SDE's own noise: global generator, a stream unlike the initial noise's
    out = Flow().sde(exact_velocity, noise, steps=100)
    assert torch.isfinite(out).all()
    # 32,000 values: sd of the sample mean 0.5 / 179 = 0.003, of the sample variance
    # 0.25 * sqrt(2 / 32000) = 0.002; the discretisation bias measured at 100-500 steps is about
    # -0.002 for the variance. Broken variants (noise scaled by sqrt(D) instead of sqrt(2 D), the
    # score drift doubled or left out, no noise) miss the variance by more than 0.1.
    assert abs(out.mean().item() - MU) < 0.015
    assert abs(out.var().item() - SIGMA**2) < 0.015
    # unlike the ODE, the output is not the deterministic image of the noise
    assert (out - (MU + SIGMA * noise)).abs().mean() > 0.05


def test_sde_is_reproducible_by_seed():
    noise = torch.randn(64, 3)
    flow = Flow()
    torch.manual_seed(3)
    a = flow.sde(exact_velocity, noise, steps=10)
    torch.manual_seed(3)
    b = flow.sde(exact_velocity, noise, steps=10)
    assert torch.equal(a, b)


def test_samplers_pass_float_model_times_in_order():
    seen: list[float] = []

    def record(x, t):
        assert t.shape == (x.shape[0],) and t.dtype == torch.float32
        seen.append(t[0].item())
        return torch.zeros_like(x)

    flow = Flow()
    flow.euler(record, torch.zeros(2, 1), steps=4)
    assert seen == pytest.approx([0.0, 0.25, 0.5, 0.75])
    seen.clear()
    flow.heun(record, torch.zeros(2, 1), steps=2)
    assert seen == pytest.approx([0.0, 0.5, 0.5, 1.0])
    seen.clear()
    flow.sde(record, torch.zeros(2, 1), steps=2, last_step_size=0.2)
    assert seen == pytest.approx([0.0, 0.4, 0.8, 1.0])


def test_each_objective_runs_its_own_samplers_and_refuses_the_others():
    flow, noise = Flow(), torch.randn(4, 2)
    assert list(Flow.samplers) == ["euler", "heun", "dopri5", "sde"] and list(DDPM.samplers) == ["ddim", "ddpm", "dpm++", "unipc"]
    for sampler in Flow.samplers:
        out = flow.sample(exact_velocity, noise, SampleConfig(sampler=sampler, steps=5), progress=True)
        assert out.shape == noise.shape and torch.isfinite(out).all()
    # the mapping runs the method it names with the settings it reads
    torch.testing.assert_close(flow.sample(exact_velocity, noise, SampleConfig(sampler="heun", steps=7)),
                               flow.heun(exact_velocity, noise, 7))
    with pytest.raises(ValueError, match="does not fit the flow objective"):
        flow.sample(exact_velocity, noise, SampleConfig(sampler="ddim"))
    with pytest.raises(ValueError, match="does not fit"):
        flow.sample(exact_velocity, noise, SampleConfig(sampler="rk4"))
    with pytest.raises(ValueError, match="steps"):
        flow.euler(exact_velocity, noise, steps=0)
    ddpm = DDPM(timesteps=10)
    with pytest.raises(ValueError, match="does not fit the ddpm objective"):
        ddpm.sample(exact_velocity, noise, SampleConfig(sampler="heun"))
    zero_eps = lambda x, t: torch.zeros_like(x)  # noqa: E731
    images = torch.randn(3, 1, 2, 2)
    torch.testing.assert_close(ddpm.sample(zero_eps, images, SampleConfig(sampler="ddim", steps=5)),
                               ddpm.ddim(zero_eps, images, 5))
    assert ddpm.sample(zero_eps, images, SampleConfig(sampler="ddpm")).shape == images.shape


def test_dopri5_without_torchdiffeq_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchdiffeq", None)  # makes `import torchdiffeq` fail
    with pytest.raises(ImportError, match="pip install torchdiffeq"):
        Flow().dopri5(exact_velocity, torch.randn(2, 2))


def test_guided_sampling_through_a_dit():
    """The path the trainer takes: guided_prediction around a DiT, then the flow sampler."""
    torch.manual_seed(0)
    model = DiT(in_channels=2, num_classes=3, input_size=4, patch_size=2, hidden_size=32, depth=2, num_heads=4)
    labels = torch.tensor([0, 2])
    predict = lambda x, t: guided_prediction(model, x, t, labels, 1.5, model.null_label, channels=1)  # noqa: E731
    out = Flow().sample(predict, torch.randn(2, 2, 4, 4), SampleConfig(sampler="heun", steps=3))
    assert out.shape == (2, 2, 4, 4) and torch.isfinite(out).all()
