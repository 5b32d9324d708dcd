"""Speed settings, mostly for GPUs: TF32 matmuls, channels-last memory, torch.compile (the fused
AdamW kernel is chosen where the optimizer is built, in :mod:`ccua.build`).

Each is a ``train.*`` key (see ccua.config) so a run folder records how it was trained. None of them
changes what is optimised; TF32 and bf16 change the arithmetic precision, which is why they are
recorded, and bf16 stays off by default (on CPUs without AVX-512 BF16 it is also slower).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


def configure_backends(tf32: bool) -> None:
    """TF32 for CUDA matmuls and convolutions (Ampere and newer); no effect on CPUs."""
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def to_memory_format(model: nn.Module, channels_last: bool) -> nn.Module:
    """Channels-last weights for convolutional backbones (faster cuDNN kernels with bf16 / TF32)."""
    return model.to(memory_format=torch.channels_last) if channels_last else model


def maybe_compile(module: nn.Module, enabled: bool) -> nn.Module:
    """``torch.compile(module)`` when enabled. The first steps pay the compilation (tens of seconds);
    measured on 2 CPU cores it gave no gain, so it is off by default."""
    if not enabled:
        return module
    log.info("compiling the training forward pass with torch.compile (the first steps are slow)")
    return torch.compile(module)


__all__ = ["configure_backends", "maybe_compile", "to_memory_format"]
