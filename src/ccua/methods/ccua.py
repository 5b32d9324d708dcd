"""CCUA: unsupervised contrastive loss (UCL) on the unconditional representation plus an
alignment loss (AL) between conditional and unconditional predictions, weighted by noise level.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ccua.config import CCUAConfig
from ccua.methods.base import Method, PassOutputs, StepContext


def ucl_loss(h: Tensor, temperature: float = 0.1, weight: Tensor | None = None) -> Tensor:
    """Unsupervised contrastive loss, averaged over the batch.

    Each sample's positive is itself; every other sample of the batch is a negative:
    L_i = log(1 + sum_{j != i} exp((c_ij - 1) / tau)) with c_ij the cosine similarity of the
    flattened h_i and h_j. Returns mean_i weight_i * L_i. Needs a batch of at least 2.
    """
    if h.shape[0] < 2:
        raise ValueError(f"UCL needs at least 2 samples per batch (per process), got {h.shape[0]}")
    z = h.flatten(1)
    z = F.normalize(z.to(torch.promote_types(z.dtype, torch.float32)), dim=1)
    logits = (z @ z.T - 1.0) / temperature
    # The positive term exp((c_ii - 1)/tau) is exactly 1, so L_i = log1p(sum of the negatives).
    # Every logit is <= 0 (cosines <= 1): exp cannot overflow, and log1p stays exact for small sums.
    eye = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    per_sample = torch.log1p(logits.masked_fill(eye, float("-inf")).exp().sum(dim=1))
    if weight is not None:
        per_sample = per_sample * weight.to(per_sample.dtype)
    return per_sample.mean()


def alignment_loss(pred_cond: Tensor, pred_uncond: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean over samples and elements of weight_i * (pred_cond - pred_uncond)^2."""
    per_sample = (pred_cond.float() - pred_uncond.float()).pow(2).flatten(1).mean(dim=1)
    if weight is not None:
        per_sample = per_sample * weight.float()
    return per_sample.mean()


def noise_weight(s: Tensor, weighting: str) -> Tensor:
    """Per-sample weight from the noise level s (1 = pure noise).

    noise_level: s (the paper's intent, large noise counts most); flow_time: 1 - s, the
    released SiT code's weight by its own t, which up-weights low noise; none: 1.
    """
    if weighting == "noise_level":
        return s.float()
    if weighting == "flow_time":
        return 1.0 - s.float()
    if weighting == "none":
        return torch.ones_like(s, dtype=torch.float32)
    raise ValueError(f"unknown weighting {weighting!r}")


class CCUA(Method):
    """L_dm + alpha * L_ucl + gamma * L_al (SPEC section 5)."""

    name = "ccua"
    passes = ("uncond",)
    min_batch = 2

    def __init__(self, config: CCUAConfig):
        self.config = config

    def loss_terms(self, context: StepContext, outputs: PassOutputs) -> dict[str, Tensor]:
        weight = noise_weight(context.batch.s, self.config.weighting)
        ucl = ucl_loss(outputs.representations["uncond"], self.config.temperature, weight)
        # A sample whose label was dropped has two identical passes (up to dropout): no signal.
        align_weight = weight * (~context.dropped).float()
        al = alignment_loss(outputs.predictions["cond"], outputs.predictions["uncond"], align_weight)
        return {"ucl": self.config.alpha * ucl, "al": self.config.gamma * al}
