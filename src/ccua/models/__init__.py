"""Backbones. Every backbone has encode(x, t, y) -> (h, context), decode(h, context) -> prediction,
forward = decode(encode(...)), a ``null_label`` attribute (the learned unconditional class) and a
``from_config(settings, in_channels, num_classes, resolution)`` constructor.

``BACKBONES`` is the registry of ``model.arch`` names.
"""

from __future__ import annotations

from torch import nn

from ccua.models.dit import DIT_SIZES, DiT
from ccua.models.unet import UNet

#: ``model.arch`` -> the backbone class
BACKBONES: dict[str, type[nn.Module]] = {"unet": UNet, "dit": DiT}

__all__ = ["BACKBONES", "DIT_SIZES", "DiT", "UNet"]
