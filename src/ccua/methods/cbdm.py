"""CBDM (class-balancing diffusion models, SPEC section 6).

A second pass on the same x_t and t with labels y' drawn from the class prior; the regulariser
pulls the conditional prediction towards the (stopped) prediction for y' and, four times more
weakly, the y' prediction towards the (stopped) conditional one:

    L_cb = tau * mean_i s_i * ( mse_i(pred_y, sg(pred_y')) + 1/4 mse_i(sg(pred_y), pred_y') )

pred_y is the "cond" pass. Samples whose label was dropped for classifier-free guidance get
weight 0: the released code skips the regulariser on steps whose labels were dropped (it drops
the whole batch at once), and with per-sample dropping the equivalent is to leave those samples
out. The mean is still over the whole batch, as for CCUA's alignment loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ccua.config import setting
from ccua.diffusion.base import per_sample_mse
from ccua.methods.base import Method, PassOutputs, StepContext, weighted_mean

PRIORS = ("empirical", "uniform")


@dataclass
class CBDMConfig:
    """``method.cbdm``: a second pass with labels from the class prior (docs/methods.md)."""

    tau: float = 1.0  # weight of the regulariser (the released default)
    prior: str = setting("empirical", choices=PRIORS)  # empirical (released code) | uniform (paper's variant)


def class_prior(class_counts: Tensor, prior: str = "empirical") -> Tensor:
    """Probabilities over the C real classes: training frequencies, or uniform."""
    counts = class_counts.float()
    if prior == "empirical":
        if counts.numel() == 0 or bool((counts < 0).any()) or float(counts.sum()) <= 0:
            raise ValueError(f"class_counts must be non-negative with a positive sum, got {class_counts}")
        return counts / counts.sum()
    if prior == "uniform":
        return torch.full_like(counts, 1.0 / counts.numel())
    raise ValueError(f"unknown CBDM prior {prior!r} (valid: {', '.join(PRIORS)})")


def cbdm_loss(pred_y: Tensor, pred_other: Tensor, weight: Tensor | None = None) -> Tensor:
    """mean_i weight_i * ( mse_i(pred_y, sg(pred_other)) + 1/4 mse_i(sg(pred_y), pred_other) ).

    mse_i is the mean over the elements of sample i; sg is a stop-gradient (``detach``), so
    pred_y gets the gradient of the first term only and pred_other that of the second only.
    """
    regulariser = per_sample_mse(pred_y, pred_other.detach())
    commitment = per_sample_mse(pred_y.detach(), pred_other)
    return weighted_mean(regulariser + 0.25 * commitment, weight)


class CBDM(Method):
    """Class-balancing regulariser with an extra pass named "other" (labels y' ~ class prior)."""

    name = "cbdm"
    passes = ("other",)
    settings = CBDMConfig
    config: CBDMConfig
    min_batch = 1  # a per-sample loss: defined for any batch size
    published_guidance = 1.6  # CBDM-pytorch's README evaluates CBDM models with omega 1.6

    def prepare(self, context: StepContext) -> None:
        """Draw y' for every sample from the prior with torch's global generator."""
        labels = context.labels
        prior = class_prior(context.class_counts.to(labels.device), self.config.prior)
        other = torch.multinomial(prior, labels.shape[0], replacement=True)
        context.pass_labels["other"] = other.to(labels.dtype)

    def loss_terms(self, context: StepContext, outputs: PassOutputs) -> dict[str, Tensor]:
        # Dropped samples would pull the unconditional prediction towards a random class.
        weight = self.config.tau * context.batch.s.float() * (~context.dropped).float()
        loss = cbdm_loss(outputs.predictions["cond"], outputs.predictions["other"], weight)
        return {"cbdm": loss}
