"""Image grids written with PIL (no torchvision)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def grid_image(rows: list[np.ndarray], pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile rows of uint8 images [n_i, H, W, C] into one uint8 image; short rows are left blank."""
    if not rows:
        raise ValueError("no rows to tile")
    height, width, channels = rows[0].shape[1:]
    columns = max(len(r) for r in rows)
    grid = np.full((pad + len(rows) * (height + pad), pad + columns * (width + pad), channels), pad_value,
                   dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            top, left = pad + i * (height + pad), pad + j * (width + pad)
            grid[top: top + height, left: left + width] = image
    return grid


def save_grid(rows: list[np.ndarray], path: str | Path, scale: int = 1) -> Path:
    """Write a grid PNG; ``scale`` enlarges small images (nearest neighbour) so they can be seen."""
    grid = grid_image(rows)
    image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
