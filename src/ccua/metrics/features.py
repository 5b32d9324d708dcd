"""The interface of feature networks, and the image sets they read batch by batch.

A :class:`FeatureNet` turns uint8 images into feature vectors (and, when it has a classifier
head, logits). The networks themselves are :mod:`ccua.metrics.inception`,
:mod:`ccua.metrics.classifier` and the random test network below; ``ccua.metrics.FEATURE_NETS``
names them and :func:`ccua.metrics.build_feature_net` builds one by name.
"""

from __future__ import annotations

import abc
import logging
from typing import Any, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ccua.devices import default_device
from ccua.distributed import DistInfo, own_items, shared_map
from ccua.images import convert_channels, resize_uint8, to_uint8_nchw
from ccua.metrics.weights import state_hash
from ccua.progress import progress_bar

logger = logging.getLogger(__name__)


class ImageBatches(Protocol):
    """Anything that hands out uint8 [B, C, H, W] batches by position."""

    def __len__(self) -> int: ...

    def get(self, start: int, stop: int) -> Tensor: ...


class TensorImages:
    """An in-memory uint8 [N, C, H, W] tensor as :class:`ImageBatches`."""

    def __init__(self, images: Any):
        self.images = to_uint8_nchw(images)

    def __len__(self) -> int:
        return self.images.shape[0]

    def get(self, start: int, stop: int) -> Tensor:
        return self.images[start:stop]

    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])


class DatasetImages:
    """Items ``indices`` of a data set with ``uint8_image(i)`` (C x H x W), read batch by batch."""

    def __init__(self, dataset: Any, indices: Sequence[int] | np.ndarray | None = None):
        self.dataset = dataset
        self.indices = np.arange(len(dataset)) if indices is None else np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def get(self, start: int, stop: int) -> Tensor:
        return torch.stack([torch.as_tensor(self.dataset.uint8_image(int(i))) for i in self.indices[start:stop]])

    def image_shape(self) -> tuple[int, int, int]:
        return tuple(torch.as_tensor(self.dataset.uint8_image(int(self.indices[0]))).shape)


def as_batches(images: Any) -> ImageBatches:
    if hasattr(images, "get") and hasattr(images, "__len__") and not isinstance(images, (np.ndarray, Tensor)):
        return images
    if hasattr(images, "uint8_image"):
        return DatasetImages(images)
    return TensorImages(images)


class FeatureNet(abc.ABC):
    """A network mapping uint8 images to features [N, dim] (and optionally logits).

    Subclasses set ``name``, ``dim``, ``weights_hash``, ``in_channels``, ``resolution`` (the input
    size they need, or None when the network resizes itself) and ``num_logits`` (None: no logits),
    and implement :meth:`_forward` on a float batch holding uint8 values.
    """

    name: str = "feature_net"
    dim: int = 0
    weights_hash: str = ""
    in_channels: int = 3
    resolution: int | None = None
    num_logits: int | None = None
    # True when logit k means class k of the data set (the classifier): class accuracy is defined.
    logits_are_classes: bool = False

    def __init__(self, batch_size: int = 64, bf16: bool = False, device: str | torch.device | None = None,
                 progress: bool = True):
        self.batch_size = int(batch_size)
        self.bf16 = bool(bf16)
        self.device = default_device(device)
        self.progress = progress
        self._warned: set[str] = set()
        if self.bf16 and self.device.type == "cpu" and "AVX512" not in torch.backends.cpu.get_cpu_capability():
            # Without AVX-512 (bf16) the CPU emulates bf16 convolutions: measured 10-20x slower than fp32.
            logger.warning("bf16 autocast on a CPU without AVX-512 (%s) is much slower than fp32",
                           torch.backends.cpu.get_cpu_capability())

    # ---------------------------------------------------------------- to implement
    @abc.abstractmethod
    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Float [B, in_channels, H, W] with values 0..255 on ``self.device`` -> (features, logits)."""

    def config_tag(self) -> str:
        """Everything besides the weights that changes the features (preprocessing); part of cache keys."""
        return ""

    # ---------------------------------------------------------------- public
    @property
    def has_logits(self) -> bool:
        return self.num_logits is not None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "weights_hash": self.weights_hash, "bf16": self.bf16,
                "config": self.config_tag(), "num_logits": self.num_logits, "resolution": self.resolution,
                "in_channels": self.in_channels}

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)

    def _prepare(self, batch: Tensor) -> Tensor:
        if batch.shape[1] != self.in_channels:
            if not (batch.shape[1] == 1 and self.in_channels == 3):  # grey into Inception is routine
                self._warn_once("channels", f"{self.name}: converting {batch.shape[1]}-channel images to "
                                            f"{self.in_channels} channel(s)")
            batch = convert_channels(batch, self.in_channels)
        if self.resolution is not None and batch.shape[-2:] != (self.resolution, self.resolution):
            self._warn_once("size", f"{self.name}: resizing {tuple(batch.shape[-2:])} images to "
                                    f"{self.resolution}x{self.resolution} (bilinear, antialiased)")
            batch = resize_uint8(batch, self.resolution, self.resolution)
        return batch.to(self.device, non_blocking=True).float()

    @torch.inference_mode()
    def extract(self, images: Any, want_logits: bool = True, desc: str = "features",
                dist: DistInfo | None = None) -> tuple[Tensor | None, Tensor | None]:
        """Features float32 [N, dim] (CPU) and logits float32 [N, num_logits] or None, in one pass.

        Under several processes (``dist``, each with this network on its own device) batch k of
        ``batch_size`` images is extracted by process k mod world size: process 0 gets every
        row, in order and equal to one process's, the others (None, None).
        """
        source = as_batches(images)
        n = len(source)
        dist = dist or DistInfo(device=self.device)
        starts = range(0, n, self.batch_size)
        with_logits = want_logits and self.has_logits
        mine = sum(min(self.batch_size, n - starts[k]) for k in own_items(len(starts), dist))
        bar = progress_bar(total=mine, desc=f"{desc} ({self.name})", unit="img",
                           disable=not (self.progress and dist.is_main) or n == 0, leave=False)

        def batch(k: int) -> tuple[Tensor, Tensor | None]:
            stop = min(starts[k] + self.batch_size, n)
            x = self._prepare(to_uint8_nchw(source.get(starts[k], stop)))
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                feats, logs = self._forward(x)
            bar.update(stop - starts[k])
            return feats.float().cpu(), logs.float().cpu() if with_logits and logs is not None else None

        try:
            parts = shared_map(batch, len(starts), dist)
        finally:
            bar.close()
        if parts is None:
            return None, None
        features = torch.cat([f for f, _ in parts]) if parts else torch.empty(0, self.dim)
        if not with_logits:
            return features, None
        return features, torch.cat([g for _, g in parts]) if parts else torch.empty(0, self.num_logits)

    def features(self, images: Any) -> Tensor:
        """uint8 images (NHWC, NCHW, NHW or a data set with ``uint8_image``) -> float32 [N, dim]."""
        return self.extract(images, want_logits=False)[0]

    def logits(self, images: Any) -> Tensor:
        """Class logits [N, num_logits]; raises if this network has no classifier head."""
        if not self.has_logits:
            raise ValueError(f"feature network {self.name!r} has no logits")
        return self.extract(images, want_logits=True, desc="logits")[1]


# --------------------------------------------------------------------------- the random network

class _RandomCNN(nn.Module):
    def __init__(self, in_channels: int, dim: int, num_classes: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, dim),
        )
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.body(x)
        return features, self.head(torch.relu(features))


class PixelFeatureNet(FeatureNet):
    """No network: the image as a grey thumbnail (``side`` x ``side``, values in [0, 1]). A
    label-free view for small grey data sets (precision/recall and FID in pixel space), where a
    trained feature network could favour the classes it knows. Resizes with antialiasing."""

    name = "pixels"
    in_channels = 1

    def __init__(self, side: int = 16, **kwargs):
        super().__init__(**kwargs)
        self.resolution = int(side)
        self.dim = self.resolution * self.resolution
        self.weights_hash = f"pixels-{self.resolution}"  # nothing learned: the settings are the identity

    def config_tag(self) -> str:
        return f"grey {self.resolution}x{self.resolution}"

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        return x.flatten(1) / 255.0, None


class RandomFeatureNet(FeatureNet):
    """A random small CNN (fixed seed): any size, 3 channels (grey repeated). For tests only."""

    name = "random"
    in_channels = 3

    def __init__(self, dim: int = 32, num_classes: int = 10, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # seeded construction without disturbing the caller's RNG
        self.net = _RandomCNN(self.in_channels, dim, num_classes).eval().to(self.device)
        torch.random.set_rng_state(generator_state)
        self.dim = dim
        self.num_logits = num_classes
        self.logits_are_classes = True
        self.seed = seed
        self.weights_hash = state_hash(self.net)

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.net(x / 127.5 - 1.0)
