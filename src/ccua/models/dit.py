"""Diffusion Transformer (DiT / SiT backbone) split into encode/decode.

The network follows the published DiT design: a patchify convolution, a fixed 2-D sin-cos
position embedding, a timestep embedder (sinusoidal features of the float time, then an MLP), a
class-embedding table with a null row, adaLN-Zero transformer blocks, a final adaLN layer and
unpatchify. SiT uses the same network with a velocity output, so both name families share one
size registry. The output has as many channels as the input (no learned variance).

``encode(x, t, y)`` runs patchify and the first k blocks and returns the token activations
h [B, N_tokens, hidden] after block k; ``decode(h, context)`` runs the remaining blocks and the
final layer. k follows ``encoder_depth`` (SPEC section 3: the released CCUA code taps N/4, the
paper text all N blocks; see :func:`encoder_blocks` for how a fraction becomes a block count).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ccua.config import DIT_SIZE_FIELDS, ConfigError, setting
from ccua.models.unet import timestep_embedding


@dataclass
class DiTConfig:
    """``model.dit``: DiT / SiT (``model.arch: dit``), a published size or explicit depth and width
    (not both)."""

    # a published size such as "SiT-S/2": it sets depth, hidden_size, num_heads, patch_size and
    # mlp_ratio (written into them when the config is checked); giving one of those as well, with
    # another value than the size's, is an error
    size: str | None = None
    depth: int = setting(4, at_least=1, meaning="DiT blocks")
    hidden_size: int = setting(128, at_least=1, meaning="DiT width")
    num_heads: int = setting(4, at_least=1, meaning="DiT attention heads")
    patch_size: int = setting(2, at_least=1, meaning="DiT patch side")
    mlp_ratio: float = setting(4.0, above=0)
    encoder_depth: str = "N/4"  # where encode() stops: N/8, N/4, N/2, 3N/4, N or a block count
    # a released DiT/SiT checkpoint (DiT-XL-2-256x256.pt, SiT-XL-2-256x256.pt) to start from instead of
    # DiT's initialisation (models/dit_release.py); used when a run starts, not when it resumes
    init_from: str | None = None


@dataclass(frozen=True)
class DiTSize:
    """A named architecture: depth (blocks), hidden width, attention heads, patch size."""

    depth: int
    hidden_size: int
    num_heads: int
    patch_size: int
    mlp_ratio: float = 4.0


_FAMILIES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}

#: "DiT-S/2", ..., "SiT-XL/8": the published sizes (DiT and SiT share the architecture).
DIT_SIZES: dict[str, DiTSize] = {
    f"{prefix}-{family}/{patch}": DiTSize(depth, hidden, heads, patch)
    for prefix in ("DiT", "SiT")
    for family, (depth, hidden, heads) in _FAMILIES.items()
    for patch in (2, 4, 8)
}


def resolve_dit_size(name: str) -> DiTSize:
    """The size registered under ``name`` (e.g. "SiT-S/2"); ValueError listing the valid names."""
    try:
        return DIT_SIZES[name]
    except KeyError:
        raise ValueError(f"unknown DiT size {name!r} (valid: {', '.join(DIT_SIZES)})") from None


_DEPTH_FRACTIONS = {"N/8": Fraction(1, 8), "N/4": Fraction(1, 4), "N/2": Fraction(1, 2),
                    "3N/4": Fraction(3, 4), "N": Fraction(1)}


def encoder_blocks(encoder_depth: str | int, depth: int) -> int:
    """How many of the ``depth`` blocks encode() runs.

    A fraction f ("N/8", "N/4", "N/2", "3N/4") taps what the released SiT code taps: its list of
    block outputs ``act`` indexed at ``len(act) * f``, i.e. the output of block floor(N f)
    counted from 0, which is floor(N f) + 1 blocks ("N/4" of 12 blocks: 4 blocks). "N" is all N
    blocks (the paper's text; the list has no entry at index N), and a fraction that would reach
    past the last block is capped at N (on 4 blocks "3N/4" is all 4; decode then runs only the
    final layer). An explicit count in 1..depth (an int or an integer string) is used as given.
    """
    spec = str(encoder_depth).strip()
    if spec == "N":
        return depth
    if spec in _DEPTH_FRACTIONS:
        return min(depth, math.floor(depth * _DEPTH_FRACTIONS[spec]) + 1)
    try:
        k = int(spec)
    except ValueError:
        raise ValueError(f"encoder_depth {encoder_depth!r} must be one of {', '.join(_DEPTH_FRACTIONS)} "
                         f"or a block count in 1..{depth}") from None
    if not 1 <= k <= depth:
        raise ValueError(f"encoder_depth {k} is outside 1..{depth} (the model has {depth} blocks)")
    return k


def sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """Sin-cos features of 1-D positions: [P] -> [P, dim] (dim even), half sin, half cos."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.double()[:, None] * omega[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(dim: int, grid_size: int) -> Tensor:
    """Fixed 2-D position embedding for a grid_size x grid_size token grid, row-major: [N, dim].

    The first half of the channels encodes the column, the second half the row.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a hidden size divisible by 4, got {dim}")
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    emb = torch.cat([sincos_1d(dim // 2, cols.reshape(-1)), sincos_1d(dim // 2, rows.reshape(-1))], dim=1)
    return emb.float()


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: per-sample affine of the normalised tokens, x [B, N, D], shift/scale [B, D]."""
    return x * (1 + scale[:, None]) + shift[:, None]


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of the float time (as DiT, without rescaling) then a 2-layer MLP."""

    def __init__(self, hidden_size: int, frequency_size: int = 256):
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t, self.frequency_size).to(self.mlp[0].weight.dtype))


class Attention(nn.Module):
    """Multi-head self-attention through torch's fused scaled_dot_product_attention."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class DiTBlock(nn.Module):
    """Transformer block whose LayerNorms are modulated by the conditioning (adaLN-Zero)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        mlp_hidden = int(hidden_size * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden_size, mlp_hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(mlp_hidden, hidden_size))
        # shift, scale, gate for the attention branch and for the MLP branch
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_a[:, None] * self.attn(modulate(self.norm1(x), shift_a, scale_a))
        return x + gate_m[:, None] * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a linear map from each token to its patch of outputs."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


@dataclass
class DiTContext:
    """What decode needs besides h: the conditioning vector (time + class) [B, hidden]."""

    c: Tensor


class DiT(nn.Module):
    """Class-conditional DiT/SiT on square inputs. Label ``num_classes`` is the learned null class.

    The model does not drop labels itself: classifier-free guidance training is the trainer's
    (it passes ``null_label`` where a label is dropped). There is no dropout, as in DiT.
    """

    settings = DiTConfig

    @classmethod
    def settings_problems(cls, config: DiTConfig, resolution: int) -> Iterator[str]:
        """Settings that do not name an architecture, or do not fit the data resolution."""
        try:
            size_from_config(config)
        except ValueError as error:
            yield f"model.dit: {error}"
            return
        if resolution % config.patch_size:
            yield f"data.resolution={resolution} is not divisible by model.dit.patch_size={config.patch_size}"
        elif config.hidden_size % config.num_heads or config.hidden_size % 4:
            yield (f"model.dit.hidden_size={config.hidden_size} must be divisible by 4 (position embedding) and "
                   f"by model.dit.num_heads={config.num_heads}")

    @classmethod
    def complete_settings(cls, config: DiTConfig) -> DiTConfig:
        """The settings with a named size's numbers in their fields (so config.yaml shows the
        architecture trained). A field set to a value that is neither its default nor the size's
        conflicts with the size: ConfigError."""
        if config.size is None:
            return config
        try:
            size = resolve_dit_size(config.size)
        except ValueError as error:
            raise ConfigError(f"model.dit.size: {error}") from None
        named, default = {key: getattr(size, key) for key in DIT_SIZE_FIELDS}, DiTConfig()
        conflicts = [f"model.dit.{key}={getattr(config, key)}" for key, value in named.items()
                     if getattr(config, key) not in (value, getattr(default, key))]
        if conflicts:
            raise ConfigError(f"model.dit.size={config.size!r} sets {', '.join(f'{k}={v}' for k, v in named.items())}"
                              f", but {', '.join(conflicts)} {'is' if len(conflicts) == 1 else 'are'} also given: "
                              "remove one of them")
        return dataclasses.replace(config, **named)

    @classmethod
    def load_initial_weights(cls, model: nn.Module, config: DiTConfig) -> bool:
        """A released DiT/SiT's weights when ``init_from`` names one (True), else nothing (False)."""
        if not config.init_from:
            return False
        from ccua.models.dit_release import load_release_weights

        load_release_weights(model, config.init_from)
        return True

    @classmethod
    def from_config(cls, config: DiTConfig, in_channels: int, num_classes: int, resolution: int) -> "DiT":
        """The DiT of the ``model.dit`` settings: its named size when set, else its depth and width."""
        size = size_from_config(config)
        return cls(in_channels=in_channels, num_classes=num_classes, input_size=resolution,
                   patch_size=size.patch_size, hidden_size=size.hidden_size, depth=size.depth,
                   num_heads=size.num_heads, mlp_ratio=size.mlp_ratio, encoder_depth=config.encoder_depth)

    def __init__(self, in_channels: int, num_classes: int, input_size: int, patch_size: int = 2,
                 hidden_size: int = 384, depth: int = 12, num_heads: int = 6, mlp_ratio: float = 4.0,
                 encoder_depth: str | int = "N/4"):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input size {input_size} is not divisible by the patch size {patch_size}")
        self.in_channels = in_channels
        self.out_channels = in_channels
        self.num_classes = num_classes
        self.null_label = num_classes
        self.input_size = input_size
        self.patch_size = patch_size
        self.hidden_size = hidden_size
        self.depth = depth
        self.grid_size = input_size // patch_size
        self.num_tokens = self.grid_size**2
        self.encoder_depth = encoder_blocks(encoder_depth, depth)

        self.x_embedder = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        # Fixed, so a buffer; not saved because it is recomputed identically from the shape.
        self.register_buffer("pos_embed", sincos_2d(hidden_size, self.grid_size)[None], persistent=False)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = nn.Embedding(num_classes + 1, hidden_size)
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT's initialisation; the zeroed adaLN and output layers make every block start as the
        identity and the initial prediction 0 (adaLN-Zero)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        # The patchify conv is a linear map of each flattened patch.
        nn.init.xavier_uniform_(self.x_embedder.weight.view(self.hidden_size, -1))
        nn.init.zeros_(self.x_embedder.bias)
        nn.init.normal_(self.y_embedder.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def patchify(self, x: Tensor) -> Tensor:
        """Raw (not embedded) patches: [B, C, H, W] -> [B, N, p*p*C], in unpatchify's layout."""
        b, c, h, w = x.shape
        p = self.patch_size
        x = x.reshape(b, c, h // p, p, w // p, p)
        return torch.einsum("bchpwq->bhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)

    def unpatchify(self, x: Tensor) -> Tensor:
        """[B, N, p*p*C] -> [B, C, H, W], the inverse of :meth:`patchify`."""
        b, n, _ = x.shape
        p, g, c = self.patch_size, self.grid_size, self.out_channels
        if n != g * g:
            raise ValueError(f"expected {g * g} tokens, got {n}")
        x = x.reshape(b, g, g, p, p, c)
        return torch.einsum("bhwpqc->bchpwq", x).reshape(b, c, g * p, g * p)

    def encode(self, x: Tensor, t: Tensor, y: Tensor) -> tuple[Tensor, DiTContext]:
        """Patchify and the first ``encoder_depth`` blocks: h [B, N_tokens, hidden]."""
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"expected inputs of {self.input_size}x{self.input_size}, got {tuple(x.shape[-2:])}")
        h = self.x_embedder(x).flatten(2).transpose(1, 2)
        h = h + self.pos_embed.to(h.dtype)
        c = self.t_embedder(t) + self.y_embedder(y)
        for block in self.blocks[: self.encoder_depth]:
            h = block(h, c)
        return h, DiTContext(c=c)

    def decode(self, h: Tensor, context: DiTContext) -> Tensor:
        """The remaining blocks, the final layer and unpatchify: the prediction [B, C, H, W]."""
        for block in self.blocks[self.encoder_depth:]:
            h = block(h, context.c)
        return self.unpatchify(self.final_layer(h, context.c))

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        return self.decode(*self.encode(x, t, y))


def size_from_config(config: DiTConfig) -> DiTSize:
    """The architecture the ``model.dit`` settings name (``size`` when set, else the depth and width
    fields), with ``encoder_depth`` checked against it: ValueError naming the setting."""
    if config.size:
        size = resolve_dit_size(config.size)
    else:
        size = DiTSize(config.depth, config.hidden_size, config.num_heads, config.patch_size, config.mlp_ratio)
    encoder_blocks(config.encoder_depth, size.depth)
    return size
