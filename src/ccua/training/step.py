"""One training step's losses: noise the batch, run every pass in one call, add the methods' terms."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from ccua.diffusion.base import Objective, drop_labels, per_sample_mse
from ccua.methods.base import Method, PassOutputs, StepContext, batch_problem


def select_rows(context: Any, index: Tensor) -> Any:
    """Rows ``index`` of a backbone's decode context: a dataclass of batch-first tensors (or lists
    of them), as every backbone's ``encode`` returns."""

    def pick(value: Any) -> Any:
        if isinstance(value, Tensor):
            return value[index]
        if isinstance(value, (list, tuple)):
            return type(value)(pick(v) for v in value)
        return value

    return dataclasses.replace(context, **{f.name: pick(getattr(context, f.name))
                                           for f in dataclasses.fields(context)})


class PassRunner(nn.Module):
    """forward(x, t, y) -> (prediction, representation h) through the backbone's encode/decode seam.

    With ``decode_index`` only those rows are decoded (the prediction has one row per index) while
    h covers every row: a pass that needs only the representation skips the decoder's cost.
    The trainer wraps this module (not the backbone) in DistributedDataParallel, because DDP
    only synchronises gradients of what runs inside ``forward``.
    """

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: Tensor, t: Tensor, y: Tensor, decode_index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h, context = self.backbone.encode(x, t, y)
        if decode_index is None:
            return self.backbone.decode(h, context), h
        return self.backbone.decode(h[decode_index], select_rows(context, decode_index)), h


def run_passes(runner: nn.Module, x_t: Tensor, t: Tensor, pass_labels: dict[str, Tensor],
               batched: bool = True, pass_rows: dict[str, Tensor] | None = None,
               pass_decode: dict[str, Tensor] | None = None) -> PassOutputs:
    """Run the network once per pass on the same x_t and t, or once on all passes concatenated.

    ``pass_rows[name]``: the batch rows a pass runs on (default all); ``pass_decode[name]``: the
    positions within those rows that are decoded (default all; the others only get h).
    """
    pass_rows, pass_decode = pass_rows or {}, pass_decode or {}
    names = list(pass_labels)
    inputs = {}
    for name in names:
        rows = pass_rows.get(name)
        x, times = (x_t, t) if rows is None else (x_t[rows], t[rows])
        inputs[name] = (x, times, pass_labels[name], pass_decode.get(name))
    if not batched or len(names) == 1:
        outputs = {name: runner(*inputs[name]) for name in names}
        return PassOutputs(predictions={n: outputs[n][0] for n in names},
                           representations={n: outputs[n][1] for n in names})
    row_counts = [len(inputs[n][0]) for n in names]
    decode_index = None
    if pass_decode:  # global positions of the decoded rows; None decodes every row
        starts = [sum(row_counts[:i]) for i in range(len(names))]
        decode_index = torch.cat([start + (torch.arange(count, device=x_t.device) if decode is None else decode)
                                  for start, count, (*_, decode) in zip(starts, row_counts, inputs.values())])
    decode_counts = [count if inputs[n][3] is None else len(inputs[n][3]) for n, count in zip(names, row_counts)]
    pred, h = runner(*(torch.cat([inputs[n][k] for n in names]) for k in range(3)), decode_index)
    return PassOutputs(predictions=dict(zip(names, pred.split(decode_counts))),
                       representations=dict(zip(names, h.split(row_counts))))


def training_losses(runner: nn.Module, objective: Objective, methods: list[Method], x0: Tensor, labels: Tensor,
                    null_label: int, class_counts: Tensor, label_drop_prob: float = 0.1,
                    label_drop_mode: str = "sample", batched_passes: bool = True) -> dict[str, Tensor]:
    """All loss terms of one step; ``"total"`` is their sum and the one to backpropagate.

    The denoising loss is on the conditional pass only ("dm"); each method adds named terms.
    """
    problem = batch_problem(methods, x0.shape[0])
    if problem:
        raise ValueError(problem)
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
    outputs = run_passes(runner, context.batch.x_t, context.batch.t, pass_labels, batched_passes,
                         context.pass_rows, context.pass_decode)

    terms = {"dm": per_sample_mse(outputs.predictions["cond"], context.batch.target).mean()}
    for method in methods:
        for name, value in method.loss_terms(context, outputs).items():
            terms[name if name not in terms else f"{method.name}_{name}"] = value
    terms["total"] = torch.stack(list(terms.values())).sum()
    return terms
