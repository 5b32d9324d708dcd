"""Dispersive loss (InfoNCE with squared L2 distance, no positives; SPEC section 6).

    L_disp = lambda * log mean_{i,j} exp(-||z_i - z_j||^2 / (D * tau))

on z = flatten(h) of the conditional pass, h the encoder output at the backbone's encode/decode
seam (U-Net: bottleneck; DiT: after its encoder_depth blocks), D its dimension. The mean runs
over all B^2 pairs with the diagonal (distance 0) included, as in the release. No noise-level
weighting. At B = 1 the value is exactly log 1 = 0 with zero gradient, so the method needs B >= 2.
"""

from __future__ import annotations

import math

from dataclasses import dataclass

import torch
from torch import Tensor

from ccua.config import setting
from ccua.methods.base import Method, PassOutputs, StepContext



@dataclass
class DispersiveConfig:
    """``method.dispersive``: InfoNCE-L2 on the encoder output of the conditional pass.

    Defaults are the PyTorch release (lambda 0.25, tau 1); the paper uses 0.5 / 0.5.
    """

    weight: float = 0.25  # lambda
    temperature: float = setting(1.0, above=0)  # tau; distances are divided by D * tau

def dispersive_loss(h: Tensor, temperature: float = 1.0) -> Tensor:
    """log mean_{i,j} exp(-||z_i - z_j||^2 / (D * temperature)), z = h.flatten(1), diagonal included."""
    z = h.flatten(1).float()
    size, dim = z.shape
    # Distances by the expansion rather than cdist: the square root of cdist has an infinite
    # gradient at the zero diagonal. Autocast off: bf16 would round the expansion badly.
    with torch.autocast(device_type=z.device.type, enabled=False):
        sq_norm = z.pow(2).sum(1)
        sq_dist = (sq_norm[:, None] + sq_norm[None, :] - 2.0 * z @ z.T).clamp_min(0.0)
    eye = torch.eye(size, dtype=torch.bool, device=z.device)
    sq_dist = sq_dist.masked_fill(eye, 0.0)
    logits = -sq_dist / (dim * temperature)
    return torch.logsumexp(logits.flatten(), dim=0) - math.log(size * size)


class Dispersive(Method):
    """lambda * dispersive loss on the conditional pass's representation."""

    name = "dispersive"
    passes = ()
    # B = 1 gives exactly 0 (log 1) and no gradient: refuse a run that would silently be plain.
    settings = DispersiveConfig
    config: DispersiveConfig
    min_batch = 2

    def loss_terms(self, context: StepContext, outputs: PassOutputs) -> dict[str, Tensor]:
        h = outputs.representations["cond"]
        return {"dispersive": self.config.weight * dispersive_loss(h, self.config.temperature)}
