"""Weights of the feature networks: where their files are found, and the hashes recorded with every
number (so two results are comparable only when their feature weights' hashes agree)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from torch import nn

from ccua.config import DataConfig

#: the cache of reference features and domain classifiers (relative to the working directory)
DEFAULT_CACHE = Path(".cache/ccua")


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def state_hash(module: nn.Module) -> str:
    """sha256 over the parameter and buffer names and bytes, in name order."""
    digest = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def default_classifier_path(data: DataConfig, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """Where ``ccua features train`` puts the domain classifier of a data set and resolution."""
    return cache_dir / "classifiers" / f"{data.name}-{data.resolution}px.pt"


def feature_weights_path(features: str, path: str | None, data: DataConfig,
                         cache_dir: Path = DEFAULT_CACHE) -> str | None:
    """``path``, or for the classifier the file ``ccua features train`` writes (which must exist)."""
    if features != "classifier" or path is not None:
        return path
    path = str(default_classifier_path(data, cache_dir))
    if not Path(path).exists():
        raise FileNotFoundError(f"no domain classifier at {path}: train it with `ccua features train <preset> "
                                f"data.name={data.name} data.resolution={data.resolution}`, or give its file "
                                "(--feature-path)")
    return path
