"""OCLT (oriented calibration for long-tailed diffusion), T2H mode (SPEC section 6).

No loss term: the method changes the epsilon target. With x_t = sqrt(ab) x0_i + sqrt(1-ab) eps_i
and sigma_t^2 = 1/ab - 1, the scaled point x_t / sqrt(ab) = x0_i + sigma_t eps_i is a noisy
copy of x0_i. Sample i picks a donor j of the batch (itself included) with probability

    p(j | i) proportional to exp(-||x_t_i / sqrt(ab_i) - x0_j||^2 / (2 sigma_i^2)),

the posterior over which batch image produced x_t_i. The pick (the donor of i's target) is kept
only if class y_j has at least as many training images as y_i (a tail sample may take a head
target, never the reverse);
the target becomes the epsilon that turns x0_j into x_t_i: (x_t - sqrt(ab) x0_j) / sqrt(1-ab).

The rule applies to every sample, including those whose label was dropped for classifier-free
guidance; it is decided by the sample's true label.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ccua.config import setting
from ccua.methods.base import Method, StepContext

MODES = ("t2h",)



@dataclass
class OCLTConfig:
    """``method.oclt``: the epsilon target may be transferred from a sample of an at-least-as-frequent
    class of the same batch (docs/methods.md). DDPM objective only."""

    # t2h: a tail sample may take a head sample's target, never the reverse
    mode: str = setting("t2h", choices=MODES)

def donor_log_probs(x_t: Tensor, x0: Tensor, alpha_bar: Tensor) -> Tensor:
    """log p(j | i) over the batch, [B, B], in float64.

    Float64 because at low noise sigma^2 ~ 1e-4 divides the squared distances, which would
    otherwise carry float32 cancellation error into the logits.
    """
    ab = alpha_bar.double()
    scaled = x_t.flatten(1).double() / ab.sqrt()[:, None]
    x0 = x0.flatten(1).double()
    sigma2 = (1.0 / ab - 1.0).clamp_min(1e-30)
    sq_dist = (scaled.pow(2).sum(1)[:, None] + x0.pow(2).sum(1)[None, :] - 2.0 * scaled @ x0.T).clamp_min(0.0)
    # The own image is the likeliest donor at low noise: compute its distance directly
    # rather than by the expansion above.
    own = (scaled - x0).pow(2).sum(1)
    eye = torch.eye(x0.shape[0], dtype=torch.bool, device=x0.device)
    sq_dist = torch.where(eye, own[:, None], sq_dist)
    return torch.log_softmax(-sq_dist / (2.0 * sigma2[:, None]), dim=1)


def t2h_donors(log_probs: Tensor, labels: Tensor, class_counts: Tensor) -> Tensor:
    """Draw a donor per sample (torch's global generator) and apply the T2H rule.

    Returns the index of the sample whose x0 defines each target; a sample keeps itself when its
    draw belongs to a less frequent class.
    """
    drawn = torch.multinomial(log_probs.exp(), 1).squeeze(1)
    counts = class_counts.to(labels.device)
    keep = counts[labels[drawn]] >= counts[labels]
    own = torch.arange(labels.shape[0], device=labels.device)
    return torch.where(keep, drawn, own)


class OCLT(Method):
    """Target transfer within the batch from frequent to rare classes (DDPM objective only)."""

    name = "oclt"
    passes = ()
    # At B = 1 the only donor is the sample itself: the method would silently do nothing.
    settings = OCLTConfig
    config: OCLTConfig
    min_batch = 2
    published_guidance = 1.5  # the guidance its authors sample with
    only_objective = ("ddpm", "its transfer rule uses the DDPM sigma_t^2 = 1/alphabar_t - 1 and an epsilon target")

    def __init__(self, config: OCLTConfig | None = None):
        super().__init__(config)
        self.last_donor: Tensor | None = None  # index of each sample's target image, last step
        self._last_swapped: Tensor | None = None

    @property
    def last_swap_fraction(self) -> float:
        """Fraction of the last batch whose target came from another sample (a diagnostic only).

        Read lazily, so that training does not wait for the device every step.
        """
        if self._last_swapped is None:
            return 0.0
        return float(self._last_swapped.float().mean())

    @torch.no_grad()
    def prepare(self, context: StepContext) -> None:
        objective = context.objective
        if getattr(objective, "name", None) != "ddpm" or not hasattr(objective, "epsilon_target"):
            raise ValueError(
                f"oclt needs the ddpm objective (its transfer rule uses sigma_t^2 = 1/alphabar_t - 1), "
                f"got {getattr(objective, 'name', objective)!r}"
            )
        batch = context.batch
        size = batch.x_t.shape[0]
        log_probs = donor_log_probs(batch.x_t, batch.x0, objective.alpha_bar(batch.t))
        donor = t2h_donors(log_probs, context.labels, context.class_counts)
        swapped = donor != torch.arange(size, device=donor.device)
        transferred = objective.epsilon_target(batch.x_t, batch.x0[donor], batch.t)
        # Unswapped samples keep their target bit for bit (recomputing it would round it).
        mask = swapped.reshape(size, *([1] * (batch.target.dim() - 1)))
        batch.target = torch.where(mask, transferred.to(batch.target.dtype), batch.target)
        self.last_donor = donor
        self._last_swapped = swapped
