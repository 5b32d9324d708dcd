"""What every training objective gives the trainer and the methods."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator

import torch
from torch import Tensor

from ccua.config import SampleConfig

# A prediction function: (x_t, model time [B]) -> the objective's prediction, guidance applied.
PredictFn = Callable[[Tensor, Tensor], Tensor]
# How a sampler runs from a SampleConfig: (objective, predict, initial noise, settings, progress,
# generator of its per-step noise) -> data.
SamplerFn = Callable[..., Tensor]


def gaussian_like(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal noise shaped like ``x``, from ``generator`` (on x's device) or torch's global one."""
    if generator is None:
        return torch.randn_like(x)
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


@dataclass
class NoisedBatch:
    """One training batch after the objective drew times and noise.

    ``s`` is the noise level in [0, 1] with 1 = pure noise, the single time convention the
    methods see (DDPM: s = t / T; flow: s = 1 - t).
    """

    x0: Tensor  # clean data (pixels in [-1, 1] or latents)
    noise: Tensor
    t: Tensor  # the time the network is given
    s: Tensor  # noise level per sample, [B]
    x_t: Tensor
    target: Tensor


class Objective(abc.ABC):
    """A diffusion objective: how x_t and the regression target are built, and its samplers.

    ``samplers`` maps each ``sample.sampler`` name the objective offers to the function that runs
    it with the settings of a :class:`SampleConfig`; it is the one list of valid samplers.
    ``settings``, where the objective has settings of its own, is their dataclass: the config
    section ``diffusion.<name>``; ``sampler_settings`` names the dataclass of each sampler with
    settings of its own: the section ``sample.<sampler>`` (:func:`ccua.diffusion.register_objective`).
    """

    name: ClassVar[str] = "objective"
    samplers: ClassVar[dict[str, SamplerFn]] = {}
    settings: ClassVar[type | None] = None
    sampler_settings: ClassVar[dict[str, type]] = {}

    @classmethod
    def from_config(cls, settings: Any = None) -> "Objective":
        """The objective of its settings section (None for an objective without settings)."""
        return cls()

    @classmethod
    def sampling_problems(cls, settings: Any, sample: SampleConfig) -> Iterator[str]:
        """Messages for sampling settings this objective cannot run with its own ``settings``."""
        return iter(())

    @abc.abstractmethod
    def noise_batch(self, x0: Tensor) -> NoisedBatch:
        """Draw times and noise (from torch's global generator) and build x_t and the target."""

    @abc.abstractmethod
    def model_time(self, s: Tensor) -> Tensor:
        """The network's time input for a noise level s."""

    def sample(self, predict: PredictFn, noise: Tensor, settings: SampleConfig, progress: bool = False,
               generator: torch.Generator | None = None) -> Tensor:
        """Run the sampler ``settings.sampler`` from the initial ``noise`` to data.

        ``predict(x, t)`` takes this objective's model time and returns its prediction (epsilon
        for DDPM, velocity for flow) with guidance already applied (:func:`guided_prediction`).
        Stochastic samplers draw their per-step noise from ``generator`` (torch's global one
        without). ValueError for a sampler this objective does not offer.
        """
        run = self.samplers.get(settings.sampler)
        if run is None:
            raise ValueError(f"sampler {settings.sampler!r} does not fit the {self.name} objective "
                             f"(valid: {', '.join(self.samplers)})")
        return run(self, predict, noise, settings, progress, generator)


def per_sample_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over all but the batch dimension: [B]."""
    return (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)


def expand_like(values: Tensor, x: Tensor) -> Tensor:
    """Reshape a [B] tensor so that it broadcasts against x of shape [B, ...]."""
    return values.reshape(values.shape[0], *([1] * (x.dim() - 1))).to(x.dtype)


def guided_prediction(model, x: Tensor, t: Tensor, y: Tensor, guidance: float,
                      null_label: int, channels: int | None = None) -> Tensor:
    """Classifier-free guidance, pred_c + w (pred_c - pred_u), both passes in one forward call.

    This equals the SiT convention v_u + s (v_c - v_u) with s = 1 + w. With ``channels``
    set, only the first ``channels`` channels are guided (as the released SiT code does).
    """
    if guidance == 0:
        return model(x, t, y)
    both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null_label)]))
    cond, uncond = both.chunk(2)
    guided = cond + guidance * (cond - uncond)
    if channels is not None:
        guided = torch.cat([guided[:, :channels], cond[:, channels:]], dim=1)
    return guided


#: ``diffusion.label_drop_mode``: one coin per image, or one for the whole batch
LABEL_DROP_MODES = ("sample", "batch")


def drop_labels(labels: Tensor, null_label: int, prob: float, mode: str) -> tuple[Tensor, Tensor]:
    """Classifier-free guidance training: replace labels by the null class with probability ``prob``.

    mode "sample": one coin per image (SiT); "batch": one coin for the whole batch (released U-Net code).
    """
    if mode == "sample":
        dropped = torch.rand(labels.shape[0], device=labels.device) < prob
    elif mode == "batch":
        dropped = (torch.rand((), device=labels.device) < prob).expand(labels.shape[0]).clone()
    else:
        raise ValueError(f"unknown label drop mode {mode!r} (valid: {', '.join(LABEL_DROP_MODES)})")
    return torch.where(dropped, torch.full_like(labels, null_label), labels), dropped
