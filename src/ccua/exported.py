"""A trained model as a safetensors file: the weights in ``model.safetensors`` and, beside it, the
resolved config and what sampling needs in ``config.json`` (step, class counts, data shape).
Readable with any safetensors reader and a JSON parser, without ccua's checkpoint format;
``ccua sample`` / ``ccua evaluate`` / ``ccua.load_run`` take the folder as they take a run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ccua.checkpoint import CheckpointError
from ccua.files import atomic_file, write_text_atomic

WEIGHTS_FILE = "model.safetensors"
META_FILE = "config.json"
FORMAT = "ccua-export-1"


def is_export(path: str | Path) -> bool:
    """A folder written by :func:`write_export`."""
    path = Path(path)
    return path.is_dir() and (path / WEIGHTS_FILE).is_file() and (path / META_FILE).is_file()


def write_export(folder: str | Path, weights: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write ``weights`` (a state dict) and ``meta`` (config, step, class counts, data shape, ...)."""
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: value.detach().cpu().contiguous() for name, value in weights.items()}
    with atomic_file(folder / WEIGHTS_FILE) as stream:
        stream.write(save(tensors, metadata={"format": FORMAT, "step": str(meta["step"])}))
    write_text_atomic(folder / META_FILE, json.dumps({"format": FORMAT, **meta}, indent=2) + "\n")
    return folder


def read_export(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(weights, meta) of an exported folder; CheckpointError naming the file when it is not one."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{folder / META_FILE} cannot be read as an export's description: {error}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{folder / META_FILE} is not a ccua export's description (format {FORMAT!r})")
    try:
        weights = load_file(folder / WEIGHTS_FILE)
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{folder / WEIGHTS_FILE} cannot be read as safetensors: {error}") from None
    return weights, meta
