"""The training set: a long-tailed subset of a source, resized, as tensors in [-1, 1]."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ccua.data.sources import ArraySource, ImageSource
from ccua.images import pil_image


def resize_square(image: np.ndarray, resolution: int, channels: int) -> np.ndarray:
    """Center-crop to a square, resize (bicubic, antialiased by PIL) and set the channel count."""
    height, width = image.shape[:2]
    if image.ndim == 2:
        image = image[..., None]
    if height != width:
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        image = image[top: top + side, left: left + side]
    if image.shape[0] != resolution:
        image = np.asarray(pil_image(image).resize((resolution, resolution), Image.BICUBIC))
        if image.ndim == 2:
            image = image[..., None]
    if image.shape[2] != channels:
        if image.shape[2] == 1:
            image = np.repeat(image, channels, axis=2)
        elif channels == 1:
            image = np.asarray(Image.fromarray(image).convert("L"))[..., None]
        else:
            raise ValueError(f"cannot turn {image.shape[2]} channels into {channels}")
    return image


def to_model_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [..., C, H, W] -> float in [-1, 1]."""
    return images_uint8.float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] [B, C, H, W] -> uint8 [B, H, W, C] (clipped)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


class LongTailDataset(Dataset):
    """Images of ``source`` at ``indices``, as (float tensor C x H x W in [-1, 1], label).

    In-memory sources are resized once here; folder sources are read and resized per item.
    Horizontal flips are applied by the trainer on the batch (so the RNG state is in one place).
    """

    def __init__(self, source: ImageSource, indices: np.ndarray, resolution: int, channels: int):
        self.source = source
        self.indices = np.asarray(indices)
        self.resolution = resolution
        self.channels = channels
        self.num_classes = source.num_classes
        self.class_names = list(source.class_names)
        self.labels = np.asarray(source.labels)[self.indices]
        self._cache: torch.Tensor | None = None
        if isinstance(source, ArraySource):
            resized = np.stack([resize_square(source.image(i), resolution, channels) for i in self.indices])
            self._cache = torch.from_numpy(resized).permute(0, 3, 1, 2).contiguous()

    def __len__(self) -> int:
        return len(self.indices)

    def uint8_image(self, item: int) -> torch.Tensor:
        """uint8 C x H x W."""
        if self._cache is not None:
            return self._cache[item]
        image = resize_square(self.source.image(int(self.indices[item])), self.resolution, self.channels)
        return torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int]:
        return to_model_range(self.uint8_image(item)), int(self.labels[item])

    def class_counts(self) -> list[int]:
        return np.bincount(self.labels, minlength=self.num_classes).tolist()
