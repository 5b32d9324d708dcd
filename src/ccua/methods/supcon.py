"""Supervised-contrastive variant of CCUA's UCL (SupCon "L_out" form).

On the same representation as UCL, h_i = flatten(e(x_t_i, t_i, null)) of the unconditional pass,
with cosine similarity c_ij and temperature tau. The positives P(i) of anchor i are the samples of
its true class, the anchor itself included; the denominator runs over the whole batch, anchor
included, exactly as UCL's does:

    L_i = -1/|P(i)| sum_{p in P(i)} log( exp(c_ip/tau) / sum_a exp(c_ia/tau) )

An anchor with no same-class partner has P(i) = {i} and L_i is its UCL term, so with all-distinct
labels the loss equals UCL. L = mean_i w_i L_i with w_i = s_i (noise level) by default.
The labels are the true ones: the unconditional pass does not see them, so dropping is irrelevant.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ccua.config import setting
from ccua.methods.base import Method, PassOutputs, StepContext, weighted_mean
from ccua.methods.ccua import WEIGHTINGS, noise_weight



@dataclass
class SupConConfig:
    """``method.supcon``: the supervised-contrastive variant of UCL (positives: the same class)."""

    weight: float = 1.0
    temperature: float = setting(0.1, above=0)
    weighting: str = setting("noise_level", choices=WEIGHTINGS)  # per-sample weight, as CCUA's

def supcon_loss(h: Tensor, labels: Tensor, temperature: float = 0.1, weight: Tensor | None = None) -> Tensor:
    """Supervised contrastive loss (positives = same label, anchor included), batch mean."""
    if h.shape[0] < 2:
        raise ValueError(f"supcon needs at least 2 samples per batch (per process), got {h.shape[0]}")
    z = F.normalize(h.flatten(1).float(), dim=1)
    # Shift by the largest possible similarity (1) for stability, as UCL does; the anchor's own
    # logit is then exactly 0.
    logits = (z @ z.T - 1.0) / temperature
    eye = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(eye, 0.0)
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]).float()
    return weighted_mean(-(log_prob * positives).sum(1) / positives.sum(1), weight)


class SupCon(Method):
    """weight * supervised contrastive loss on the unconditional representation."""

    name = "supcon"
    passes = ("uncond",)
    settings = SupConConfig
    config: SupConConfig
    min_batch = 2

    def loss_terms(self, context: StepContext, outputs: PassOutputs) -> dict[str, Tensor]:
        weight = noise_weight(context.batch.s, self.config.weighting)
        loss = supcon_loss(outputs.representations["uncond"], context.labels, self.config.temperature, weight)
        return {"supcon": self.config.weight * loss}
