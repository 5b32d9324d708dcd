"""Cross-run image grids: rows = runs, columns = seeds (the same initial noise in every row)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ccua.images import save_grid, to_uint8_nchw


def tail_grid(images_per_run: Mapping[str, Any], path: str | Path, scale: int | None = None, pad: int = 2,
              column_labels: list[str] | None = None) -> Path:
    """Write a PNG with one row per run (its name on the left) and one column per seed.

    ``images_per_run``: run name -> uint8 [n_seeds, H, W, C] (or NCHW, grey or RGB). All runs must
    share H and W; a run with fewer seeds leaves its last cells blank. ``scale`` (nearest
    neighbour) defaults to enough to make a cell at least 64 pixels high.
    """
    if not images_per_run:
        raise ValueError("no runs to draw")
    rows = [to_uint8_nchw(images).permute(0, 2, 3, 1).numpy() for images in images_per_run.values()]
    scale = scale or max(1, -(-64 // rows[0].shape[1]))
    return save_grid(rows, path, scale=scale, pad=pad, row_labels=list(images_per_run), column_labels=column_labels)
