"""Cross-run image grids: rows = runs, columns = seeds (the same initial noise in every row)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def _as_nhwc_rgb(images: Any) -> np.ndarray:
    """uint8 [n, H, W, C] / [n, C, H, W] / [n, H, W] -> uint8 [n, H, W, 3]."""
    array = np.asarray(images.cpu() if hasattr(images, "cpu") else images)
    if array.dtype != np.uint8:
        raise TypeError(f"grid images must be uint8, got {array.dtype}")
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4:
        raise ValueError(f"grid images must be [n, H, W, C], got shape {array.shape}")
    if array.shape[-1] not in (1, 3, 4) and array.shape[1] in (1, 3, 4):
        array = array.transpose(0, 2, 3, 1)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return array[..., :3]


def tail_grid(images_per_run: Mapping[str, Any], path: str | Path, scale: int | None = None, pad: int = 2,
              column_labels: list[str] | None = None) -> Path:
    """Write a PNG with one row per run (its name on the left) and one column per seed.

    ``images_per_run``: run name -> uint8 [n_seeds, H, W, C] (grey or RGB). All runs must share
    H and W; a run with fewer seeds leaves its last cells blank. ``scale`` (nearest neighbour)
    defaults to enough to make a cell at least 64 pixels high.
    """
    if not images_per_run:
        raise ValueError("no runs to draw")
    runs = {name: _as_nhwc_rgb(images) for name, images in images_per_run.items()}
    shapes = {imgs.shape[1:3] for imgs in runs.values()}
    if len(shapes) != 1:
        raise ValueError(f"all runs must have the same image size, got {sorted(shapes)}")
    height, width = shapes.pop()
    scale = scale or max(1, -(-64 // height))
    cell_h, cell_w = height * scale, width * scale
    columns = max(len(imgs) for imgs in runs.values())
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = pad * 3 + max(int(measure.textlength(name, font=font)) for name in runs)
    header_h = 14 + pad if column_labels else 0
    canvas = Image.new("RGB", (label_w + columns * (cell_w + pad) + pad, header_h + pad + len(runs) * (cell_h + pad)),
                       "white")
    draw = ImageDraw.Draw(canvas)
    if column_labels:
        for j, text in enumerate(column_labels[:columns]):
            draw.text((label_w + j * (cell_w + pad), pad), text, fill="black", font=font)
    for i, (name, imgs) in enumerate(runs.items()):
        top = header_h + pad + i * (cell_h + pad)
        draw.text((pad, top + cell_h // 2 - 6), name, fill="black", font=font)
        for j, image in enumerate(imgs):
            tile = Image.fromarray(image)
            if scale > 1:
                tile = tile.resize((cell_w, cell_h), Image.NEAREST)
            canvas.paste(tile, (label_w + j * (cell_w + pad), top))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
