"""DiffROP: push the predictions of different classes apart (Yan et al., 2024, arXiv 2402.10821), as
the released CCUA SiT trainer adds it (weight 0.1, on by default there).

    d = mean_i t_i * [y_i != y_pi(i)] * mean_e (v_i - v_pi(i))_e^2,    L = lambda / (1 + d)

over a random permutation pi of the batch: each sample is paired with another, and a pair of two
classes adds the squared distance of their conditional predictions, weighted by the data time
t = 1 - s (SiT's t, 1 = data: the release up-weights low noise). Minimising lambda / (1 + d) makes
d larger, i.e. the predictions of different classes less alike; pairs of one class add nothing.
The labels are the true ones (the release drops labels inside the model's embedder, after the
loss has read them), so a sample whose label was dropped still counts with its class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ccua.methods.base import Method, PassOutputs, StepContext



@dataclass
class DiffROPConfig:
    """``method.diffrop`` (arXiv 2402.10821) as the released CCUA SiT trainer adds it: lambda / (1 + d),
    d the data-time-weighted distance of the predictions of randomly paired samples of two classes."""

    weight: float = 0.1  # lambda, the release's default

def diffrop_loss(predictions: Tensor, labels: Tensor, data_time: Tensor, permutation: Tensor,
                 weight: float) -> Tensor:
    """weight / (1 + d) for the pairs (i, permutation[i]) (see the module docstring)."""
    other = predictions[permutation]
    squared = (predictions.float() - other.float()).pow(2).flatten(1).mean(1)
    different = (labels != labels[permutation]).to(squared.dtype)
    distance = (data_time.to(squared.dtype) * different * squared).mean()
    return weight / (1.0 + distance)


class DiffROP(Method):
    """lambda / (1 + d) on the conditional predictions (module docstring)."""

    name = "diffrop"
    passes = ()
    settings = DiffROPConfig
    config: DiffROPConfig
    min_batch = 2  # one sample has no partner

    def prepare(self, context: StepContext) -> None:
        # drawn from torch's global generator, whose state checkpoints save: a resumed run repeats it
        size = context.labels.shape[0]
        context.state["diffrop_permutation"] = torch.randperm(size).to(context.labels.device)

    def loss_terms(self, context: StepContext, outputs: PassOutputs) -> dict[str, Tensor]:
        prediction = outputs.predictions["cond"]
        permutation = context.state["diffrop_permutation"]
        data_time = 1.0 - context.batch.s.float()
        return {"diffrop": diffrop_loss(prediction, context.labels, data_time, permutation, self.config.weight)}
