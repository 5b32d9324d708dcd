"""Backbones. Every backbone has encode(x, t, y) -> (h, context), decode(h, context) -> prediction,
forward = decode(encode(...)), a ``null_label`` attribute (the unconditional class), its settings
dataclass ``settings`` (the config section ``model.<arch>``) and the classmethods
``from_config(settings, in_channels, num_classes, resolution)``, ``settings_problems(settings,
resolution)``, ``complete_settings(settings)`` and ``load_initial_weights(model, settings)``.

``BACKBONES`` is the registry of ``model.arch`` names; :func:`register_backbone` adds one.
"""

from __future__ import annotations

from torch import nn

from ccua.config import register_settings
from ccua.models.dit import DIT_SIZES, DiT, DiTConfig
from ccua.models.unet import UNet, UNetConfig

#: ``model.arch`` -> the backbone class
BACKBONES: dict[str, type[nn.Module]] = {}


def register_backbone(name: str, backbone: type[nn.Module]) -> None:
    """Make ``model.arch=<name>`` build ``backbone``, with its settings as the section ``model.<name>``."""
    BACKBONES[name] = backbone
    register_settings("model", name, backbone.settings)


register_backbone("unet", UNet)
register_backbone("dit", DiT)

__all__ = ["BACKBONES", "DIT_SIZES", "DiT", "DiTConfig", "UNet", "UNetConfig", "register_backbone"]
