"""CCUA: unsupervised contrastive loss (UCL) on the unconditional representation plus an
alignment loss (AL) between conditional and unconditional predictions, weighted by noise level.

The unconditional pass is what makes CCUA cost about twice a plain step. With
``ucl_fraction`` / ``uncond_fraction`` below 1 it runs on a sub-batch instead: the encoder on a
share of the rows (enough for UCL) and the decoder on a smaller share (AL), both chosen with
probability proportional to the term's noise weight and re-weighted by the inclusion
probability, so AL stays an unbiased estimate of its full-batch value (docs/methods.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import Tensor

from ccua.config import setting
from ccua.diffusion.base import per_sample_mse
from ccua.methods.base import Method, PassOutputs, StepContext, weighted_mean


#: ``method.ccua.negatives``: UCL's negatives under several processes, this process's batch or all of them
NEGATIVES = ("local", "global")
#: the per-sample weights :func:`noise_weight` knows (``method.ccua.weighting``; SupCon's weighting too)
WEIGHTINGS = ("noise_level", "flow_time", "none")


@dataclass
class CCUAConfig:
    """``method.ccua``, SPEC section 5: L = L_dm + alpha * L_ucl + gamma * L_al."""

    alpha: float = 1.0
    gamma: float = 1.0
    temperature: float = setting(0.1, above=0)
    # noise_level: weight s (1 = pure noise), the paper's intent; flow_time: the released SiT
    # code's weight by its own t, which up-weights low noise; none: weight 1.
    weighting: str = setting("noise_level", choices=WEIGHTINGS)
    # The unconditional pass on a sub-batch (docs/methods.md, "Cheaper CCUA"): the encoder runs on
    # ucl_fraction of the rows (UCL), the decoder on uncond_fraction of them (AL), drawn in
    # proportion to the weight above and re-weighted. 1.0 / 1.0 = the exact published method.
    uncond_fraction: float = 1.0
    ucl_fraction: float = 1.0
    # UCL's negatives under several processes: local = the samples of the process's own share of
    # the batch (the released multi-GPU code); global = the whole batch of every process, as one
    # process would see it (docs/methods.md).
    negatives: str = setting("local", choices=NEGATIVES)

    def problems(self) -> Iterator[str]:
        if not 0 < self.uncond_fraction <= self.ucl_fraction <= 1:
            yield (f"method.ccua needs 0 < uncond_fraction <= ucl_fraction <= 1, got "
                   f"uncond_fraction={self.uncond_fraction}, ucl_fraction={self.ucl_fraction}")
        elif self.negatives == "global" and (self.ucl_fraction < 1 or self.uncond_fraction < 1):
            yield (f"method.ccua.negatives=global needs ucl_fraction = uncond_fraction = 1, got "
                   f"{self.ucl_fraction} and {self.uncond_fraction}: the sub-batch UCL draws and re-weights "
                   "its rows within each process; use negatives=local with it")


def ucl_loss(h: Tensor, temperature: float = 0.1, weight: Tensor | None = None, negatives: str = "local") -> Tensor:
    """Unsupervised contrastive loss, averaged over the batch.

    Each sample's positive is itself; every other sample of the batch is a negative:
    L_i = log(1 + sum_{j != i} exp((c_ij - 1) / tau)) with c_ij the cosine similarity of the
    flattened h_i and h_j. Returns mean_i weight_i * L_i. Needs a batch of at least 2.

    Under several processes "local" is each process's own batch (the released multi-GPU code);
    "global" compares this process's samples with the samples of every process (gathered with a
    differentiable all-gather, whose backward sums each sample's gradient over the processes).
    With "global" the mean of this value over the processes is the UCL of the whole batch, and so
    is the gradient DDP averages: both equal one process's on the whole batch.
    """
    z = h.flatten(1)
    z = F.normalize(z.to(torch.promote_types(z.dtype, torch.float32)), dim=1)
    candidates, first = z, 0
    distributed = torch_dist.is_available() and torch_dist.is_initialized() and torch_dist.get_world_size() > 1
    if negatives == "global" and distributed:
        from torch.distributed.nn.functional import all_gather

        # equal shares of the batch: see the trainer
        candidates, first = torch.cat(all_gather(z)), torch_dist.get_rank() * z.shape[0]
    if candidates.shape[0] < 2:
        raise ValueError(f"UCL needs at least 2 samples per batch (per process), got {h.shape[0]}")
    logits = (z @ candidates.T - 1.0) / temperature
    # The positive term exp((c_ii - 1)/tau) is exactly 1, so L_i = log1p(sum of the negatives).
    # Every logit is <= 0 (cosines <= 1): exp cannot overflow, and log1p stays exact for small sums.
    rows = torch.arange(z.shape[0], device=z.device)
    own = torch.zeros_like(logits, dtype=torch.bool)
    own[rows, first + rows] = True
    per_sample = torch.log1p(logits.masked_fill(own, float("-inf")).exp().sum(dim=1))
    return weighted_mean(per_sample, weight)


def alignment_loss(pred_cond: Tensor, pred_uncond: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean over samples and elements of weight_i * (pred_cond - pred_uncond)^2."""
    return weighted_mean(per_sample_mse(pred_cond, pred_uncond), weight)


def inclusion_probabilities(weights: Tensor, size: int) -> Tensor:
    """Inclusion probabilities pi_i proportional to ``weights`` for a sample of ``size`` rows.

    Probabilities that would exceed 1 are set to 1 and the rest of the size is shared among the
    other rows in proportion to their weights (the usual capping of probability-proportional-
    to-size sampling). Rows of weight 0 are never drawn; if fewer than ``size`` rows have a
    positive weight, all of them are taken. The result sums to min(size, #positive).
    """
    w = weights.detach().double().clamp(min=0)
    positive = w > 0
    if int(positive.sum()) <= size:
        return positive.double()
    certain = torch.zeros_like(positive)
    while True:
        free = positive & ~certain
        share = (size - int(certain.sum())) * w / w[free].sum()
        over = free & (share > 1)
        if not bool(over.any()):
            return torch.where(certain, torch.ones_like(w), torch.where(free, share, torch.zeros_like(w)))
        certain |= over


def systematic_sample(probabilities: Tensor) -> Tensor:
    """Row indices drawn with exactly the inclusion ``probabilities`` (each <= 1, summing to an
    integer m): systematic sampling over a random order, which draws m distinct rows.

    Uses torch's global generator, so the choice is part of the step's reproducible randomness.
    """
    order = torch.randperm(len(probabilities), device=probabilities.device)
    cumulative = torch.cumsum(probabilities[order], dim=0)
    start = torch.rand((), device=probabilities.device, dtype=cumulative.dtype)
    # row k is drawn when one of the points start, start + 1, ... falls in (C_{k-1}, C_k]
    hits = torch.floor(cumulative - start) - torch.floor(torch.cat([cumulative.new_zeros(1), cumulative[:-1]]) - start)
    return order[hits > 0.5].sort().values


def subset_ucl_loss(h: Tensor, temperature: float, weight: Tensor, probabilities: Tensor, batch_size: int) -> Tensor:
    """UCL of a full batch of ``batch_size`` estimated from the rows ``h`` drawn with ``probabilities``.

    Anchors: sum_i w_i L_i / pi_i / B (Horvitz-Thompson, unbiased in the anchor average).
    Negatives: each anchor's sum over the B - 1 others is estimated as (B - 1) times the 1/pi-
    weighted mean over the drawn ones (self-normalised, so rare rows cannot blow it up), which
    keeps the loss on the scale of the full batch's log(1 + sum of B - 1 negatives). With every
    row drawn (pi = 1) this is exactly :func:`ucl_loss`.
    """
    if h.shape[0] < 2:
        raise ValueError(f"UCL needs at least 2 rows, got {h.shape[0]}")
    z = h.flatten(1)
    z = F.normalize(z.to(torch.promote_types(z.dtype, torch.float32)), dim=1)
    inverse = (1.0 / probabilities).to(z.dtype)
    eye = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    negatives = ((z @ z.T - 1.0) / temperature).exp().masked_fill(eye, 0.0)
    other_weight = (inverse[None, :] * (~eye).to(z.dtype)).sum(dim=1)
    estimated_sum = (batch_size - 1) * (negatives * inverse[None, :]).sum(dim=1) / other_weight
    per_anchor = torch.log1p(estimated_sum) * weight.to(z.dtype) * inverse
    return per_anchor.sum() / batch_size


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
    raise ValueError(f"unknown weighting {weighting!r} (valid: {', '.join(WEIGHTINGS)})")


class CCUA(Method):
    """L_dm + alpha * L_ucl + gamma * L_al (SPEC section 5).

    With ``ucl_fraction = uncond_fraction = 1`` (the default) the unconditional pass covers the
    whole batch: the exact published method. Below 1 the method runs its own pass
    ("ccua_uncond") on rows E drawn with probability proportional to the noise weight (encoder
    only), of which rows S (again proportional to the weight) are decoded for AL.
    """

    name = "ccua"
    passes = ("uncond",)
    settings = CCUAConfig
    config: CCUAConfig
    min_batch = 2

    def __init__(self, config: CCUAConfig | None = None):
        super().__init__(config)
        self.subsampled = self.config.ucl_fraction < 1 or self.config.uncond_fraction < 1
        if self.subsampled:
            self.passes = ("ccua_uncond",)

    def prepare(self, context: StepContext) -> None:
        """Draw the rows of the sub-batch pass (nothing to do for the full method)."""
        if not self.subsampled:
            return
        weight = noise_weight(context.batch.s, self.config.weighting)
        batch_size = weight.shape[0]
        encoder_size = min(batch_size, max(2, round(self.config.ucl_fraction * batch_size)))
        decoder_size = min(encoder_size, max(1, round(self.config.uncond_fraction * batch_size)))
        encoder_prob = inclusion_probabilities(weight, encoder_size)
        rows = systematic_sample(encoder_prob)
        if len(rows) < 2:  # (almost) every weight is zero: any two rows, their terms are zero anyway
            rows = torch.arange(2, device=weight.device)
            encoder_prob = torch.ones_like(encoder_prob)
        decoder_prob = inclusion_probabilities(weight[rows], decoder_size)
        decoded = systematic_sample(decoder_prob) if decoder_prob.sum() > 0 else torch.arange(1, device=rows.device)
        context.pass_labels["ccua_uncond"] = torch.full_like(context.labels[rows], context.null_label)
        context.pass_rows["ccua_uncond"] = rows
        context.pass_decode["ccua_uncond"] = decoded
        # P(row decoded) = P(in E) * P(decoded | in E): the two-phase inclusion probability of AL
        context.state["ccua"] = {"rows": rows, "decoded": decoded, "encoder_prob": encoder_prob[rows],
                                 "decoder_prob": encoder_prob[rows][decoded] * decoder_prob[decoded].clamp(min=1e-12)}

    def loss_terms(self, context: StepContext, outputs: PassOutputs) -> dict[str, Tensor]:
        weight = noise_weight(context.batch.s, self.config.weighting)
        # A sample whose label was dropped has two identical passes (up to dropout): no signal.
        align_weight = weight * (~context.dropped).float()
        if not self.subsampled:
            ucl = ucl_loss(outputs.representations["uncond"], self.config.temperature, weight, self.config.negatives)
            al = alignment_loss(outputs.predictions["cond"], outputs.predictions["uncond"], align_weight)
            return {"ucl": self.config.alpha * ucl, "al": self.config.gamma * al}
        picked = context.state["ccua"]
        rows, decoded_rows = picked["rows"], picked["rows"][picked["decoded"]]
        batch_size = weight.shape[0]
        ucl = subset_ucl_loss(outputs.representations["ccua_uncond"], self.config.temperature, weight[rows],
                              picked["encoder_prob"], batch_size)
        # Horvitz-Thompson: sum over the decoded rows of w_i d_i / pi_i, over the full batch size
        al_weight = align_weight[decoded_rows] / picked["decoder_prob"].float()
        al = alignment_loss(outputs.predictions["cond"][decoded_rows], outputs.predictions["ccua_uncond"], al_weight)
        al = al * len(decoded_rows) / batch_size
        return {"ucl": self.config.alpha * ucl, "al": self.config.gamma * al}
