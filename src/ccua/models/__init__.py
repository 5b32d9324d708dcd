"""Backbones. Every backbone has encode(x, t, y) -> (h, context), decode(h, context) -> prediction,
forward = decode(encode(...)), and a ``null_label`` attribute (the learned unconditional class)."""

from __future__ import annotations

from torch import nn

from ccua.config import ModelConfig
from ccua.models.dit import DiT, dit_from_config
from ccua.models.unet import UNet


def build_model(config: ModelConfig, in_channels: int, num_classes: int, resolution: int) -> nn.Module:
    """The backbone named by ``config.arch`` for data of the given shape and class count."""
    if config.arch == "unet":
        return UNet(in_channels=in_channels, num_classes=num_classes, resolution=resolution, ch=config.ch,
                    ch_mult=tuple(config.ch_mult), attn_resolutions=tuple(config.attn_resolutions),
                    num_res_blocks=config.num_res_blocks, dropout=config.dropout)
    if config.arch == "dit":
        return dit_from_config(config, in_channels=in_channels, num_classes=num_classes, resolution=resolution)
    raise ValueError(f"unknown model.arch {config.arch!r}")
