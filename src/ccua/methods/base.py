"""The interface every training method (regulariser) implements.

A training step is: the objective noises the batch; each method may ``prepare`` it (choose
labels for an extra pass, change the target); the trainer runs all requested passes through
the network in one batched call; each method returns its named, already weighted loss terms.
No method calls the network itself, so passes are shared and batched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor

from ccua.diffusion.base import NoisedBatch, Objective


@dataclass
class StepContext:
    """Everything a method may read (and, in ``prepare``, change) about the current step."""

    batch: NoisedBatch
    labels: Tensor  # the true class of each sample
    cond_labels: Tensor  # labels of the conditional pass: the null class where dropped
    dropped: Tensor  # bool [B]: the label was replaced by the null class
    null_label: int
    class_counts: Tensor  # training images per class, [C] (for priors and transfer rules)
    objective: Objective
    # labels of extra passes chosen by methods in prepare(), e.g. {"other": y'}
    pass_labels: dict[str, Tensor] = field(default_factory=dict)
    # optional row subsets of an extra pass: which batch rows it runs on (indices into the batch,
    # its labels then have one entry per row) and which of those rows are decoded (positions within
    # the rows); rows not decoded only get the encoder, i.e. a representation h but no prediction
    pass_rows: dict[str, Tensor] = field(default_factory=dict)
    pass_decode: dict[str, Tensor] = field(default_factory=dict)
    # values a method keeps between its prepare() and loss_terms() of the same step
    state: dict[str, Any] = field(default_factory=dict)


@dataclass
class PassOutputs:
    """Predictions and encoder representations of each pass, keyed by pass name.

    "cond" is always present; "uncond" (null labels) and method-defined passes when requested.
    A pass restricted to a row subset (``StepContext.pass_rows`` / ``pass_decode``) has one
    representation per row and one prediction per decoded row, in that order.
    """

    predictions: dict[str, Tensor]
    representations: dict[str, Tensor]


def weighted_mean(per_sample: Tensor, weight: Tensor | None = None) -> Tensor:
    """mean_i weight_i * per_sample_i over the batch (the plain mean without a weight); the weight
    is cast to the values' dtype. Every per-sample loss of the methods ends here."""
    if weight is not None:
        per_sample = per_sample * weight.to(per_sample.dtype)
    return per_sample.mean()


class Method:
    """Base class: a method adds loss terms to the denoising loss, or changes its target."""

    name: str = "method"
    #: extra passes this method needs besides "cond": "uncond", or a name it fills in prepare()
    passes: tuple[str, ...] = ()
    #: the smallest per-process batch for which the method's loss is defined
    min_batch: int = 1
    #: its settings: a dataclass (fields declared with :func:`ccua.config.setting`, combinations
    #: refused by its ``problems()``), the config section ``method.<name>``; None: no settings
    settings: ClassVar[type | None] = None
    #: the sampling guidance w (eps_c + w (eps_c - eps_u)) its authors evaluate with; None: none published
    published_guidance: ClassVar[float | None] = None
    #: (objective, why) when the method works with one objective only; None: with every objective
    only_objective: ClassVar[tuple[str, str] | None] = None

    def __init__(self, config: Any = None):
        """``config``: the method's settings section (default: its settings' defaults)."""
        self.config = config if config is not None or self.settings is None else self.settings()

    def prepare(self, context: StepContext) -> None:
        """Called after noising, before the forward pass. Default: nothing."""

    def loss_terms(self, context: StepContext, outputs: PassOutputs) -> dict[str, Tensor]:
        """Named scalar terms, already multiplied by their weights. Default: none."""
        return {}


def batch_problem(methods: list[Method], per_process_batch: int) -> str | None:
    """The message for a per-process batch too small for one of ``methods`` (its ``min_batch``), or
    None: the one check of it, made before training and at every step."""
    short = [f"method {m.name!r} needs a per-process batch of at least {m.min_batch}" for m in methods
             if per_process_batch < m.min_batch]
    return f"{'; '.join(short)}, got {per_process_batch}" if short else None
