"""ccua: class-conditional diffusion on long-tailed data (CCUA and its baselines).

The Python API (:mod:`ccua.api`): ``ccua.load_run``, ``ccua.evaluate_samples``; the command line:
``ccua --help``. Importing the package loads nothing heavy: the API is imported on first use.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

try:
    __version__ = metadata.version("ccua")
except metadata.PackageNotFoundError:  # run from a source tree that is not installed
    __version__ = "0+unknown"

_API = ("load_run", "evaluate_samples", "TrainedRun", "Scores", "GroupScores")


def __getattr__(name: str) -> Any:
    if name in _API:
        from ccua import api

        return getattr(api, name)
    raise AttributeError(f"module 'ccua' has no attribute {name!r}")


__all__ = ["__version__", *_API]
