"""The DDPM U-Net with a class embedding and a learned null class, split into encode/decode.

encode(x, t, y) runs the down path and the middle blocks and returns the bottleneck h
(256x4x4 for the paper's CIFAR setting) with what the up path needs; decode(h, context)
runs the up path. forward = decode(encode(...)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ccua.config import setting

#: ``model.unet.null_embedding``: what the null label adds to the time embedding
NULL_EMBEDDINGS = ("zero", "learned")


@dataclass
class UNetConfig:
    """``model.unet``: the DDPM U-Net (``model.arch: unet``)."""

    ch: int = setting(128, at_least=1, meaning="U-Net base channels")
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 2, 2])
    attn_resolutions: list[int] = field(default_factory=lambda: [16])
    num_res_blocks: int = setting(2, at_least=0, meaning="U-Net residual blocks per level")
    dropout: float = setting(0.1, at_least=0, below=1)
    # What the unconditional pass (the null label) adds to the time embedding: zero = nothing, as
    # the released U-Net (its unconditional call passes no label); learned = a trained embedding
    # row of its own, as DiT. Configs stored before this setting existed were trained learned.
    null_embedding: str = setting("zero", choices=NULL_EMBEDDINGS)

    def problems(self) -> Iterator[str]:
        if not self.ch_mult or min(self.ch_mult) < 1:
            yield f"model.unet.ch_mult={self.ch_mult} must be a non-empty list of positive integers"


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) times t: [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4) if channels >= 4 else 1, channels)


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_ch)
        self.norm2 = _norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the spatial positions."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = _norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, height, width = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, height * width).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2)[:, None], k.transpose(1, 2)[:, None],
                                             v.transpose(1, 2)[:, None])[:, 0]
        return x + self.proj(out.transpose(1, 2).reshape(b, c, height, width))


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


@dataclass
class UNetContext:
    """What decode needs besides h: the skip activations and the time+class embedding."""

    skips: list[Tensor]
    emb: Tensor


class UNet(nn.Module):
    """Class-conditional DDPM U-Net. Label ``num_classes`` is the null class: with
    ``null_embedding="zero"`` (the released U-Net) it adds nothing to the time embedding, with
    ``"learned"`` it has a trained embedding row of its own."""

    NULL_EMBEDDINGS = NULL_EMBEDDINGS
    settings = UNetConfig

    @classmethod
    def settings_problems(cls, config: UNetConfig, resolution: int) -> Iterator[str]:
        """Settings that do not fit the data resolution."""
        factor = 2 ** (len(config.ch_mult) - 1)
        if resolution % factor:
            yield (f"data.resolution={resolution} must be divisible by {factor}: the U-Net halves it "
                   f"{len(config.ch_mult) - 1} times (model.unet.ch_mult={config.ch_mult})")

    @classmethod
    def complete_settings(cls, config: UNetConfig) -> UNetConfig:
        return config

    @classmethod
    def load_initial_weights(cls, model: nn.Module, config: UNetConfig) -> bool:
        """Nothing to load: the U-Net starts from its own initialisation."""
        return False

    @classmethod
    def from_config(cls, config: UNetConfig, in_channels: int, num_classes: int, resolution: int) -> "UNet":
        """The U-Net of the ``model.unet`` settings for data of the given shape and class count."""
        return cls(in_channels=in_channels, num_classes=num_classes, resolution=resolution, ch=config.ch,
                   ch_mult=tuple(config.ch_mult), attn_resolutions=tuple(config.attn_resolutions),
                   num_res_blocks=config.num_res_blocks, dropout=config.dropout,
                   null_embedding=config.null_embedding)

    def __init__(self, in_channels: int, num_classes: int, resolution: int, ch: int = 128,
                 ch_mult: tuple[int, ...] = (1, 2, 2, 2), attn_resolutions: tuple[int, ...] = (16,),
                 num_res_blocks: int = 2, dropout: float = 0.1, null_embedding: str = "zero"):
        super().__init__()
        if null_embedding not in self.NULL_EMBEDDINGS:
            raise ValueError(f"null_embedding must be one of {self.NULL_EMBEDDINGS}, got {null_embedding!r}")
        if resolution % (2 ** (len(ch_mult) - 1)):
            raise ValueError(f"resolution {resolution} is not divisible by 2^{len(ch_mult) - 1} (ch_mult {ch_mult})")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.null_label = num_classes
        self.ch = ch
        emb_dim = ch * 4
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.null_embedding = null_embedding
        # The null row exists in both conventions, so checkpoints have one layout; as padding_idx it
        # starts at zero and gets no gradient, so it stays the zero vector through training and EMA.
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim,
                                      padding_idx=self.null_label if null_embedding == "zero" else None)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)

        self.down = nn.ModuleList()
        skip_channels = [ch]
        current, res = ch, resolution
        for level, mult in enumerate(ch_mult):
            out_ch = ch * mult
            for _ in range(num_res_blocks):
                blocks = nn.ModuleList([ResBlock(current, out_ch, emb_dim, dropout)])
                if res in attn_resolutions:
                    blocks.append(AttnBlock(out_ch))
                self.down.append(blocks)
                current = out_ch
                skip_channels.append(current)
            if level != len(ch_mult) - 1:
                self.down.append(nn.ModuleList([Downsample(current)]))
                skip_channels.append(current)
                res //= 2

        self.mid = nn.ModuleList([ResBlock(current, current, emb_dim, dropout), AttnBlock(current),
                                  ResBlock(current, current, emb_dim, dropout)])
        self.representation_channels = current
        self.representation_resolution = res

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(ch_mult))):
            out_ch = ch * mult
            for _ in range(num_res_blocks + 1):
                blocks = nn.ModuleList([ResBlock(current + skip_channels.pop(), out_ch, emb_dim, dropout)])
                if res in attn_resolutions:
                    blocks.append(AttnBlock(out_ch))
                self.up.append(blocks)
                current = out_ch
            if level != 0:
                self.up.append(nn.ModuleList([Upsample(current)]))
                res *= 2
        self.norm_out = _norm(current)
        self.conv_out = nn.Conv2d(current, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @staticmethod
    def _run(blocks: nn.ModuleList, h: Tensor, emb: Tensor) -> Tensor:
        for block in blocks:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
        return h

    def encode(self, x: Tensor, t: Tensor, y: Tensor) -> tuple[Tensor, UNetContext]:
        """Down path and middle blocks: h is the bottleneck output."""
        emb = self.time_mlp(timestep_embedding(t, self.ch)) + self.class_emb(y)
        h = self.conv_in(x)
        skips = [h]
        for blocks in self.down:
            h = self._run(blocks, h, emb)
            skips.append(h)
        h = self._run(self.mid, h, emb)
        return h, UNetContext(skips=skips, emb=emb)

    def decode(self, h: Tensor, context: UNetContext) -> Tensor:
        """Up path from the bottleneck to the prediction."""
        skips = list(context.skips)
        for blocks in self.up:
            if isinstance(blocks[0], ResBlock):
                h = torch.cat([h, skips.pop()], dim=1)
            h = self._run(blocks, h, context.emb)
        return self.conv_out(F.silu(self.norm_out(h)))

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        return self.decode(*self.encode(x, t, y))
