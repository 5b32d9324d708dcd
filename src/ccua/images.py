"""uint8 images: their layouts (NHWC, NCHW, grey NHW), channel and size conversion, and grids
written with PIL (no torchvision)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ccua.files import atomic_file

# ITU-R 601-2 luma, the weights PIL uses for RGB -> "L".
LUMA = (0.299, 0.587, 0.114)


def to_uint8_nchw(images: Any) -> Tensor:
    """A uint8 image array/tensor as [N, C, H, W].

    Accepts [N, H, W] (grey), [N, C, H, W] and [N, H, W, C] with 1 to 4 channels (grey, grey +
    alpha, RGB, RGBA); when both the second and the last axis could be channels, NCHW is assumed.
    """
    tensor = images if isinstance(images, Tensor) else torch.as_tensor(np.asarray(images))
    if tensor.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 (0..255), got {tensor.dtype}; convert with ccua.data.to_uint8")
    if tensor.ndim == 3:
        return tensor[:, None]
    if tensor.ndim != 4:
        raise ValueError(f"images must have 3 or 4 dimensions, got shape {tuple(tensor.shape)}")
    if tensor.shape[1] <= 4:
        return tensor
    if tensor.shape[-1] <= 4:
        return tensor.permute(0, 3, 1, 2)
    raise ValueError(f"cannot tell the channel axis of images with shape {tuple(tensor.shape)} (1 to 4 channels)")


def convert_channels(images: Tensor, channels: int) -> Tensor:
    """To 1 or 3 channels: alpha (2nd of 2, 4th of 4) is dropped, grey is repeated, RGB -> luma."""
    have = images.shape[1]
    if have == channels:
        return images
    if channels not in (1, 3) or have not in (1, 2, 3, 4):
        raise ValueError(f"cannot turn {have} channels into {channels}")
    if have in (2, 4):  # grey + alpha, RGBA
        images, have = images[:, : have - 1], have - 1
        if have == channels:
            return images
    if have == 1:
        return images.expand(-1, 3, -1, -1)
    weights = torch.tensor(LUMA, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    grey = (images.float() * weights).sum(1, keepdim=True)
    return grey.round().clamp(0, 255).to(images.dtype) if images.dtype == torch.uint8 else grey


def resize_uint8(images: Tensor, height: int, width: int) -> Tensor:
    """uint8 [N, C, H, W] -> uint8 [N, C, height, width], bilinear with antialiasing (PIL-like)."""
    if images.shape[2] == height and images.shape[3] == width:
        return images
    out = F.interpolate(images.float(), size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return out.round().clamp(0, 255).to(torch.uint8)


def pil_image(image: np.ndarray) -> Image.Image:
    """A uint8 [H, W, C] array as a PIL image: grey ("L") for one channel, else RGB(A)."""
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def save_grid(rows: list[np.ndarray], path: str | Path, scale: int = 1, pad: int = 2,
              row_labels: list[str] | None = None, column_labels: list[str] | None = None) -> Path:
    """Write a PNG with one row per entry of ``rows`` (uint8 [n, H, W, C] arrays, all images of one
    size; convert other layouts with :func:`to_uint8_nchw`); a short row leaves its last cells blank.

    ``scale`` enlarges every image (nearest neighbour) so small ones can be seen; ``pad`` white
    pixels separate the images and frame the grid. With ``row_labels`` (text left of each row)
    or ``column_labels`` (text above the columns) the PNG is RGB; without, grey images give a
    grey PNG.
    """
    if not rows:
        raise ValueError("no rows to draw")
    labelled = row_labels is not None or column_labels is not None
    batches = [torch.as_tensor(np.asarray(row)).permute(0, 3, 1, 2) for row in rows]
    sizes = {tuple(batch.shape[2:]) for batch in batches if len(batch)}
    if len(sizes) != 1:
        raise ValueError(f"all rows must have the same image size, got {sorted(sizes)}")
    channels = 1 if not labelled and all(batch.shape[1] == 1 for batch in batches) else 3
    tiles = [convert_channels(batch, channels).permute(0, 2, 3, 1).numpy() for batch in batches]
    height, width = sizes.pop()
    grid = pil_image(_tile(tiles, (height * scale, width * scale), scale, pad))
    if labelled:
        columns = max(len(tile) for tile in tiles)
        grid = _with_labels(grid, (row_labels or [])[:len(tiles)], (column_labels or [])[:columns],
                            (height * scale, width * scale), pad)
    path = Path(path)
    with atomic_file(path) as stream:
        grid.save(stream, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))
    return path


def _tile(rows: list[np.ndarray], cell: tuple[int, int], scale: int, pad: int) -> np.ndarray:
    """Rows of NHWC images, each enlarged ``scale`` times to ``cell``, ``pad`` white pixels around every cell."""
    height, width = cell
    columns = max(len(row) for row in rows)
    grid = np.full((pad + len(rows) * (height + pad), pad + columns * (width + pad), rows[0].shape[-1]), 255,
                   dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            top, left = pad + i * (height + pad), pad + j * (width + pad)
            grid[top: top + height, left: left + width] = image.repeat(scale, axis=0).repeat(scale, axis=1)
    return grid


def _with_labels(grid: Image.Image, row_labels: list[str], column_labels: list[str], cell: tuple[int, int],
                 pad: int) -> Image.Image:
    """The grid on a white RGB canvas with text left of the rows and above the columns."""
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = pad * 3 + max((int(measure.textlength(text, font=font)) for text in row_labels), default=0)
    header = 14 + pad if column_labels else 0
    canvas = Image.new("RGB", (label_width + grid.width, header + grid.height), "white")
    canvas.paste(grid.convert("RGB"), (label_width - pad, header))
    draw = ImageDraw.Draw(canvas)
    height, width = cell
    for j, text in enumerate(column_labels):
        draw.text((label_width + j * (width + pad), pad), text, fill="black", font=font)
    for i, text in enumerate(row_labels):
        top = header + pad + i * (height + pad)
        draw.text((pad, top + height // 2 - 6), text, fill="black", font=font)
    return canvas
