"""Weights of the released DiT and SiT checkpoints (facebookresearch/DiT, willisma/SiT: DiT-XL/2,
SiT-XL/2, ...) into ccua's DiT, to fine-tune them on a long-tailed set (``model.dit.init_from``).

The release's layout differs from ccua's in names only, and in three tensors:
- ``x_embedder.proj`` (timm's PatchEmbed) is ccua's ``x_embedder``; ``y_embedder.embedding_table``
  is ``y_embedder``; the MLPs' ``fc1``/``fc2`` (timm's Mlp) are ``mlp.0``/``mlp.2``;
- ``pos_embed``, the fixed sin-cos table, is recomputed by ccua (it is not a weight);
- DiT learns the variance: its final layer predicts 2C channels per pixel ([eps, variance]); the
  first C (the prediction ccua trains) are kept;
- the class table has one row per class and the null class last, as ccua's; for another class
  count than the release's, the class rows keep ccua's initialisation and only the null row (the
  unconditional model) is taken.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from ccua.checkpoint import CheckpointError, check_archive_sizes

log = logging.getLogger(__name__)

#: release name pattern -> ccua name
_RENAMES = [
    (re.compile(r"^x_embedder\.proj\."), "x_embedder."),
    (re.compile(r"^y_embedder\.embedding_table\."), "y_embedder."),
    (re.compile(r"\.mlp\.fc1\."), ".mlp.0."),
    (re.compile(r"\.mlp\.fc2\."), ".mlp.2."),
]


def _renamed(name: str) -> str:
    for pattern, replacement in _RENAMES:
        name = pattern.sub(replacement, name)
    return name


def release_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The model weights of a released checkpoint file: a plain state dict (DiT-XL-2-256x256.pt,
    SiT-XL-2-256x256.pt), or a training checkpoint's ``ema`` (else ``model``) entry."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.dit.init_from: no file {path}")
    check_archive_sizes(path, "released DiT/SiT checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - one line says why
        raise CheckpointError(f"model.dit.init_from: {path} cannot be loaded as tensors only ({str(error)[:200]}); a "
                              "training checkpoint holding Python objects (SiT's args) must first be saved as its "
                              "'ema' state dict") from None
    for key in ("ema", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            return state[key]
    if not isinstance(state, dict):
        raise CheckpointError(f"model.dit.init_from: {path} holds a {type(state).__name__}, not a state dict")
    return state


def to_ccua(release: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """The release's weights under ccua's names and shapes for ``model`` (module docstring);
    CheckpointError naming the first entry that does not fit."""
    own = model.state_dict()
    mapped: dict[str, Tensor] = {}
    for name, value in release.items():
        if name == "pos_embed":
            continue  # recomputed
        target = _renamed(name)
        if target not in own:
            raise CheckpointError(f"model.dit.init_from: the release's {name!r} has no place in this DiT (another "
                                  "architecture? model.dit.size must match the checkpoint's)")
        mapped[target] = value
    mapped.update(_final_layer(mapped, own, model.out_channels))
    mapped.update(_class_table(mapped, own, model))
    missing = [name for name in own if name not in mapped]
    if missing:
        raise CheckpointError(f"model.dit.init_from: the release has no {missing[0]!r} ({len(missing)} entries "
                              "missing)")
    for name, value in mapped.items():
        if value.shape != own[name].shape:
            raise CheckpointError(f"model.dit.init_from: {name} is {tuple(value.shape)} in the release, "
                                  f"{tuple(own[name].shape)} here (model.dit.size, data.channels or data.resolution "
                                  "differ from the checkpoint's)")
    return mapped


def _final_layer(mapped: dict[str, Tensor], own: dict[str, Tensor], channels: int) -> dict[str, Tensor]:
    """DiT's learned-variance output (2C channels, [prediction, variance] per pixel) cut to C."""
    weight, bias = mapped["final_layer.linear.weight"], mapped["final_layer.linear.bias"]
    wanted = own["final_layer.linear.weight"].shape[0]
    if weight.shape[0] != 2 * wanted:
        return {}
    # rows are ordered (patch row, patch column, channel) with 2C channels: keep channels < C
    pixels = wanted // channels
    keep = (torch.arange(pixels)[:, None] * 2 * channels + torch.arange(channels)[None]).flatten()
    return {"final_layer.linear.weight": weight[keep], "final_layer.linear.bias": bias[keep]}


def _class_table(mapped: dict[str, Tensor], own: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """The release's class table, or for another class count its null row alone."""
    table, wanted = mapped["y_embedder.weight"], own["y_embedder.weight"]
    if table.shape == wanted.shape:
        return {}
    log.warning("model.dit.init_from: the release has %d classes, this data set %d: the class rows start afresh, "
                "the null row (the unconditional model) is the release's", table.shape[0] - 1, wanted.shape[0] - 1)
    fresh = wanted.clone()
    fresh[model.null_label] = table[-1]
    return {"y_embedder.weight": fresh}


def load_release_weights(model: nn.Module, path: str | Path) -> None:
    """Initialise ``model`` (ccua's DiT) from the released checkpoint at ``path``."""
    model.load_state_dict(to_ccua(release_state_dict(path), model))
    log.info("model.dit.init_from: initialised from %s", path)
