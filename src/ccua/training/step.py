"""One training step's losses: noise the batch, run every pass in one call, add the methods' terms."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ccua.diffusion.base import Objective, per_sample_mse
from ccua.methods.base import Method, PassOutputs, StepContext


class PassRunner(nn.Module):
    """forward(x, t, y) -> (prediction, representation h) through the backbone's encode/decode seam.

    The trainer wraps this module (not the backbone) in DistributedDataParallel, because DDP
    only synchronises gradients of what runs inside ``forward``.
    """

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        h, context = self.backbone.encode(x, t, y)
        return self.backbone.decode(h, context), h


def drop_labels(labels: Tensor, null_label: int, prob: float, mode: str) -> tuple[Tensor, Tensor]:
    """Classifier-free guidance training: replace labels by the null class with probability ``prob``.

    mode "sample": one coin per image (SiT); "batch": one coin for the whole batch (released U-Net code).
    """
    if mode == "sample":
        dropped = torch.rand(labels.shape[0], device=labels.device) < prob
    elif mode == "batch":
        dropped = (torch.rand((), device=labels.device) < prob).expand(labels.shape[0]).clone()
    else:
        raise ValueError(f"unknown label drop mode {mode!r}")
    return torch.where(dropped, torch.full_like(labels, null_label), labels), dropped


def run_passes(runner: nn.Module, x_t: Tensor, t: Tensor, pass_labels: dict[str, Tensor],
               batched: bool = True) -> PassOutputs:
    """Run the network once per pass on the same x_t and t, or once on all passes concatenated."""
    names = list(pass_labels)
    if batched and len(names) > 1:
        k = len(names)
        pred, h = runner(torch.cat([x_t] * k), torch.cat([t] * k), torch.cat([pass_labels[n] for n in names]))
        preds, reps = pred.chunk(k), h.chunk(k)
        return PassOutputs(predictions=dict(zip(names, preds)), representations=dict(zip(names, reps)))
    predictions, representations = {}, {}
    for name in names:
        predictions[name], representations[name] = runner(x_t, t, pass_labels[name])
    return PassOutputs(predictions=predictions, representations=representations)


def training_losses(runner: nn.Module, objective: Objective, methods: list[Method], x0: Tensor, labels: Tensor,
                    null_label: int, class_counts: Tensor, label_drop_prob: float = 0.1,
                    label_drop_mode: str = "sample", batched_passes: bool = True) -> dict[str, Tensor]:
    """All loss terms of one step; ``"total"`` is their sum and the one to backpropagate.

    The denoising loss is on the conditional pass only ("dm"); each method adds named terms.
    """
    for method in methods:
        if x0.shape[0] < method.min_batch:
            raise ValueError(f"method {method.name!r} needs a per-process batch of at least {method.min_batch}, "
                             f"got {x0.shape[0]}")
    batch = objective.noise_batch(x0)
    cond_labels, dropped = drop_labels(labels, null_label, label_drop_prob, label_drop_mode)
    context = StepContext(batch=batch, labels=labels, cond_labels=cond_labels, dropped=dropped,
                          null_label=null_label, class_counts=class_counts, objective=objective)
    for method in methods:
        method.prepare(context)

    pass_labels = {"cond": cond_labels}
    for method in methods:
        for name in method.passes:
            if name == "uncond":
                pass_labels["uncond"] = torch.full_like(labels, null_label)
            elif name not in context.pass_labels:
                raise RuntimeError(f"method {method.name!r} asked for pass {name!r} but set no labels for it")
            else:
                pass_labels[name] = context.pass_labels[name]
    outputs = run_passes(runner, context.batch.x_t, context.batch.t, pass_labels, batched_passes)

    terms = {"dm": per_sample_mse(outputs.predictions["cond"], context.batch.target).mean()}
    for method in methods:
        for name, value in method.loss_terms(context, outputs).items():
            terms[name if name not in terms else f"{method.name}_{name}"] = value
    terms["total"] = torch.stack(list(terms.values())).sum()
    return terms
