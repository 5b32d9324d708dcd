"""A small CNN classifier for the grey offline sets: its features stand in for Inception's.

Inception was trained on colour photographs at 299 x 299; on 16 x 16 grey clothes or digits its
features say little and it runs at a few images per second on a CPU. A classifier trained on the
data set itself is fast and sensitive to what matters there (is this a recognisable sandal?), and
its logits give the class accuracy of generated images. Numbers from it are comparable only with
numbers from the same weights file (the weights hash is recorded with every result).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ccua.devices import default_device
from ccua.images import to_uint8_nchw
from ccua.metrics.features import DatasetImages, FeatureNet
from ccua.files import atomic_file
from ccua.checkpoint import check_archive_sizes
from ccua.metrics.weights import file_sha256
from ccua.progress import progress_bar

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


class SmallCNN(nn.Module):
    """Two conv stages (conv-BN-ReLU x2, max pool), a 4 x 4 average pool, a ``feature_dim`` layer.

    The feature space is the penultimate layer's output before its ReLU (dense and roughly
    Gaussian, unlike the sparse post-ReLU activations); the logits are computed from its ReLU.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, feature_dim: int = 128):
        super().__init__()

        def conv(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.body = nn.Sequential(
            *conv(in_channels, width), *conv(width, width), nn.MaxPool2d(2),
            *conv(width, 2 * width), *conv(2 * width, 2 * width), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        )
        self.embed = nn.Sequential(nn.Linear(2 * width * 16, feature_dim), nn.BatchNorm1d(feature_dim))
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x in [-1, 1] -> (features [B, feature_dim], logits [B, num_classes])."""
        features = self.embed(self.body(x))
        return features, self.head(self.dropout(F.relu(features)))


class ClassifierFeatureNet(FeatureNet):
    """The trained :class:`SmallCNN` as a feature network (features + class logits)."""

    name = "classifier"
    logits_are_classes = True

    def __init__(self, model: SmallCNN, meta: dict[str, Any], weights_hash: str, **kwargs):
        super().__init__(**kwargs)
        self.net = model.eval().to(self.device)
        self.meta = dict(meta)
        self.weights_hash = weights_hash
        self.dim = int(meta["feature_dim"])
        self.num_logits = int(meta["num_classes"])
        self.in_channels = int(meta["channels"])
        self.resolution = int(meta["resolution"])

    @classmethod
    def from_file(cls, path: str | Path, **kwargs) -> "ClassifierFeatureNet":
        """Load a file written by :func:`train_classifier` (plain tensors and metadata only)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"classifier weights {path} do not exist: train them with `ccua features train "
                                    "<preset> --out <file>` (its data set and resolution)")
        check_archive_sizes(path, "classifier weights file")
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or "state_dict" not in payload or "meta" not in payload:
            raise ValueError(f"{path} is not a classifier file written by ccua.metrics.train_classifier")
        meta = payload["meta"]
        model = SmallCNN(meta["channels"], meta["num_classes"], meta["width"], meta["feature_dim"])
        model.load_state_dict(payload["state_dict"])
        net = cls(model, meta, file_sha256(path), **kwargs)
        net.weights_path = path
        return net

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(trained_on=self.meta.get("dataset"), test_accuracy=self.meta.get("test_accuracy"),
                    weights_path=str(getattr(self, "weights_path", "")))
        return info

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.net(x / 127.5 - 1.0)


def _as_uint8_tensor(dataset: Any) -> tuple[Tensor, Tensor]:
    images = DatasetImages(dataset).get(0, len(dataset))
    return to_uint8_nchw(images), torch.as_tensor(np.asarray(dataset.labels), dtype=torch.long)


@torch.inference_mode()
def _accuracy(model: nn.Module, images: Tensor, labels: Tensor, device: torch.device, batch_size: int = 1024) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device).float() / 127.5 - 1.0
        correct += int((model(x)[1].argmax(1).cpu() == labels[start:start + batch_size]).sum())
    return correct / max(len(images), 1)


def _fit(model: nn.Module, train_x: Tensor, train_y: Tensor, epochs: int, batch_size: int, lr: float,
         generator: torch.Generator, device: torch.device, progress: bool) -> None:
    """AdamW with a one-cycle learning rate, random 1-pixel shifts as augmentation."""
    resolution = int(train_x.shape[2])
    steps_per_epoch = math.ceil(len(train_x) / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(1, epochs * steps_per_epoch))
    bar = progress_bar(total=epochs * steps_per_epoch, desc="classifier", disable=not progress)
    for _epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        for step in range(steps_per_epoch):
            idx = order[step * batch_size:(step + 1) * batch_size]
            x = train_x[idx].float() / 127.5 - 1.0
            # a random shift of up to one pixel: cheap augmentation that helps at 16 x 16
            pad = F.pad(x, (1, 1, 1, 1), mode="replicate")
            dy, dx = torch.randint(0, 3, (2,), generator=generator).tolist()
            x = pad[:, :, dy:dy + resolution, dx:dx + x.shape[3]]
            loss = F.cross_entropy(model(x.to(device))[1], train_y[idx].to(device), label_smoothing=0.05)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()


def train_classifier(data_config: Any, out_path: str | Path, epochs: int = 3, batch_size: int = 128, seed: int = 0,
                     progress: bool = True, lr: float = 3e-3, width: int = 32, feature_dim: int = 128,
                     device: str | torch.device | None = None, train_set: Any = None, test_set: Any = None,
                     max_train: int | None = None) -> dict[str, Any]:
    """Train :class:`SmallCNN` on the balanced training split and save it for ``build_feature_net``.

    Data: ``build_reference_set(data_config, "train")`` and ``"test"`` at the configured resolution
    and channels (or ``train_set``/``test_set``: objects with ``labels`` and ``uint8_image``).
    AdamW with a one-cycle learning rate, random 1-pixel shifts as augmentation. Saves
    ``{"state_dict", "meta"}`` with ``torch.save`` (loadable with ``weights_only=True``); returns the
    metadata: test_accuracy, train_seconds, data set, resolution, channels, num_classes, ...
    """
    from ccua.data import build_reference_set

    device = default_device(device)
    if train_set is None:
        train_set = build_reference_set(data_config, "train")
    if test_set is None:
        test_set = build_reference_set(data_config, "test")
    train_x, train_y = _as_uint8_tensor(train_set)
    test_x, test_y = _as_uint8_tensor(test_set)
    generator = torch.Generator().manual_seed(seed)
    if max_train is not None and max_train < len(train_x):
        keep = torch.randperm(len(train_x), generator=generator)[:max_train]
        train_x, train_y = train_x[keep], train_y[keep]
    num_classes = int(getattr(train_set, "num_classes", int(train_y.max()) + 1))
    channels, resolution = int(train_x.shape[1]), int(train_x.shape[2])

    torch.manual_seed(seed)
    model = SmallCNN(channels, num_classes, width, feature_dim).to(device)
    start_time = time.perf_counter()
    _fit(model, train_x, train_y, epochs, batch_size, lr, generator, device, progress)
    train_seconds = time.perf_counter() - start_time
    test_accuracy = _accuracy(model, test_x, test_y, device)
    meta = {
        "format": FORMAT_VERSION, "dataset": getattr(data_config, "name", None) if data_config is not None else None,
        "resolution": resolution, "channels": channels, "num_classes": num_classes, "width": width,
        "feature_dim": feature_dim, "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
        "num_train": len(train_x), "num_test": len(test_x), "test_accuracy": test_accuracy,
        "torch": str(torch.__version__),
    }  # no wall time in the file: the same training writes the same bytes, so its hash names the weights
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_file(out_path) as stream:
        torch.save({"state_dict": state, "meta": meta}, stream)
    logger.info("classifier: test accuracy %.4f after %d epochs (%.0f s), saved to %s", test_accuracy, epochs,
                train_seconds, out_path)
    return {**meta, "train_seconds": train_seconds, "path": str(out_path), "weights_hash": file_sha256(out_path)}
