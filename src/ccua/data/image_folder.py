"""The image folder source: a folder of class sub-folders, or an ImageNet-LT style split file.

Image folders are untrusted input: listed paths and links must stay inside ``data.root`` (a
class's images inside its own folder) unless ``allow_outside_root`` is set, and an image declaring
more pixels than ``max_image_pixels`` is refused before it is decoded. Its settings are the
section ``data.image_folder``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ccua.config import DataConfig, setting
from ccua.data.sources import DataError, FolderSource, ImageSource, ReadPolicy, SourceConfig, pixel_limit


@dataclass
class ImageFolderConfig(SourceConfig):
    """``data.image_folder.*``: which files are the training and test splits, and what the files may do."""

    split_file: str | None = None  # "relative/path label" lines (ImageNet-LT format); None = class sub-folders
    # the test split in the same format (ImageNet_LT_test.txt): the balanced reference
    test_split_file: str | None = setting(None, resumable=True)
    # the test split as a folder of class sub-folders with the training folder's class names
    # (train/<class>/ beside test/<class>/)
    test_root: str | None = setting(None, resumable=True)
    # listed paths and links must stay inside data.root (a class's images inside its own folder)
    # unless this is set
    allow_outside_root: bool = setting(False, resumable=True)
    # an image declaring more pixels is refused (None: 64 x resolution^2, at least 4096 x 4096)
    max_image_pixels: int | None = setting(None, at_least=1, resumable=True,
                                           meaning="pixels an image file may declare")

    def _own_folder(self, split: str) -> str | None:
        """The folder of class sub-folders that is ``split`` by itself (the test root), if any."""
        return self.test_root if split == "test" else None

    def _listed(self, split: str) -> str | None:
        """The split file that lists ``split``'s images, if any."""
        return self.test_split_file if split == "test" else self.split_file

    def description(self, data: DataConfig, split: str) -> str:
        if own := self._own_folder(split):
            return f"image folder {own}"
        listed = self._listed(split)
        return f"image folder {data.root}" + (f", split file {listed}" if listed else "")

    def reference_tag(self, split: str) -> str:
        if own := self._own_folder(split):
            return Path(own).name
        listed = self._listed(split)
        return Path(listed).stem if listed else ""

    def has_test_split(self) -> bool:
        return bool(self.test_split_file or self.test_root)

    def imbalance_note(self, split: str) -> str | None:
        if self.split_file and split == "train":
            return ("a split-file data set has no balanced training set: evaluate with --reference test and "
                    "data.image_folder.test_split_file (e.g. ImageNet_LT_test.txt) for a balanced reference")
        return None

    def read_policy(self, resolution: int) -> ReadPolicy:
        """What the files may make the loader do at training ``resolution``."""
        return ReadPolicy(self.allow_outside_root, pixel_limit(resolution, self.max_image_pixels))


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def _is_hidden(name: str) -> bool:
    """Hidden files and folders (``.ipynb_checkpoints``, macOS ``._x.png``) and macOS zip debris."""
    return name.startswith(".") or name == "__MACOSX"


def _inside(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` resolves (symlinks included) to ``folder`` or below it."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def _image_files(class_dir: Path, root: Path, policy: ReadPolicy) -> list[Path]:
    """The image files below ``class_dir``: symlinked folders followed (once each), hidden ones skipped.

    Every file must resolve inside the class folder: a link to another class's folder, or out of
    data.root, is a DataError naming it (with ``policy.allow_outside_root`` links may leave the
    class folder, never to data.root or above it, which would take every class's images).
    """
    files: list[Path] = []
    seen: set[str] = set()
    for folder, subfolders, names in os.walk(class_dir, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a symlink back up the tree would otherwise be walked forever
            subfolders[:] = []
            continue
        seen.add(real)
        if _inside(root, real):
            raise DataError(f"{folder} links to {real}, which holds the whole of data.root {root}: it would take "
                            "every class's images; remove the link")
        if not policy.allow_outside_root and not _inside(real, class_dir):
            where = "another class's folder" if _inside(real, root) else "outside data.root"
            raise DataError(f"{folder} links to {real}, {where}; ccua reads a class's images from its own folder "
                            "only (set data.image_folder.allow_outside_root=true to follow such links)")
        subfolders[:] = [d for d in subfolders if not _is_hidden(d)]
        files += [Path(folder) / n for n in names if not _is_hidden(n) and Path(n).suffix.lower() in IMAGE_SUFFIXES]
    if not policy.allow_outside_root:
        outside = [f for f in files if not _inside(f, class_dir)]
        if outside:
            raise DataError(f"{outside[0]} links to {os.path.realpath(outside[0])}, outside its class folder "
                            f"{class_dir} ({len(outside)} such file(s)); set data.image_folder.allow_outside_root=true "
                            "to read them")
    return sorted(files)


def read_split_file(split_path: str | Path, root: Path, num_classes: int | None = None,
                    policy: ReadPolicy = ReadPolicy()) -> tuple[list[str], np.ndarray]:
    """``relative/path label`` lines: blank lines skipped, CRLF and a UTF-8 BOM accepted.

    A line that is not ``path label``, a label that is not an integer, below 0 or (given
    ``num_classes``) beyond the class count, a path that leaves ``root`` (absolute, ``..``, or
    through a link; unless ``policy.allow_outside_root``) and listed files missing under ``root``
    are DataErrors naming the file and line.
    """
    split_path = Path(split_path)
    if not split_path.is_file():
        raise DataError(f"split file {split_path} does not exist")
    try:
        text = split_path.read_text(encoding="utf-8-sig")
    except (UnicodeDecodeError, OSError) as error:
        raise DataError(f"cannot read split file {split_path} as text ({error})") from None
    paths, labels, line_numbers = [], [], []
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise DataError(f"{split_path}:{line_no}: expected 'relative/path label', got {line!r}")
        try:
            label = int(parts[1])
        except ValueError:
            raise DataError(f"{split_path}:{line_no}: label {parts[1]!r} is not an integer class index") from None
        if label < 0:
            raise DataError(f"{split_path}:{line_no}: label {label} is negative (class indices start at 0)")
        if num_classes is not None and label >= num_classes:
            raise DataError(f"{split_path}:{line_no}: label {label} is beyond the {num_classes} classes of the "
                            f"training data (0..{num_classes - 1})")
        path = parts[0].strip()
        if not policy.allow_outside_root and not _inside(root / path, root):
            raise DataError(f"{split_path}:{line_no}: {path} is outside data.root {root}; listed paths must stay "
                            "inside it (set data.image_folder.allow_outside_root=true to read files elsewhere)")
        paths.append(path)
        labels.append(label)
        line_numbers.append(line_no)
    if not paths:
        raise DataError(f"split file {split_path} lists no images")
    missing = [(n, rel) for n, rel in zip(line_numbers, paths) if not os.path.isfile(root / rel)]
    if missing:
        line_no, rel = missing[0]
        raise DataError(f"{split_path}: {len(missing)} of {len(paths)} listed files are missing under {root} "
                        f"(first at line {line_no}: {rel}); is data.root the folder the paths are relative to?")
    return paths, np.asarray(labels, dtype=np.int64)


def _class_folders(root: Path, policy: ReadPolicy) -> FolderSource:
    """One sub-folder per class (sorted names = class indices; symlinked folders count, hidden ones not)."""
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not _is_hidden(p.name))
    if not class_dirs:
        raise DataError(f"image folder {root} has no class sub-folders")
    paths, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        files = _image_files(class_dir, root, policy)
        if not files:
            raise DataError(f"class {label} has no image files in its folder {class_dir} "
                            f"({', '.join(sorted(IMAGE_SUFFIXES))}): add images or remove the folder")
        paths += [str(f.relative_to(root)) for f in files]
        labels += [label] * len(files)
    return FolderSource(root, paths, np.asarray(labels, dtype=np.int64), len(class_dirs), [d.name for d in class_dirs],
                        policy)


def _test_folders(train: FolderSource, test_root: Path, policy: ReadPolicy) -> FolderSource:
    """The test split of a ``train/<class>/`` folder: ``test_root/<class>/`` with the same class names
    (labels as in training); a class on one side only is a DataError naming it."""
    if not test_root.is_dir():
        raise DataError(f"test folder {test_root} (data.image_folder.test_root) does not exist")
    test = _class_folders(test_root, policy)
    only_train = sorted(set(train.class_names) - set(test.class_names))
    only_test = sorted(set(test.class_names) - set(train.class_names))
    if only_train or only_test:
        side = (f"class {only_train[0]!r} has no folder in {test_root}" if only_train
                else f"{test_root} has class {only_test[0]!r}, which the training folder {train.root} has not")
        raise DataError(f"{side} ({len(only_train)} training classes missing from the test folder, {len(only_test)} "
                        "test classes unknown): the two folders must hold the same class names")
    label_of = {name: label for label, name in enumerate(train.class_names)}
    labels = np.asarray([label_of[test.class_names[label]] for label in test.labels], dtype=np.int64)
    return FolderSource(test_root, test.paths, labels, train.num_classes, train.class_names, policy)


def load_image_folder(root: str | Path | None, split_file: str | Path | None = None, split: str = "train",
                      test_split_file: str | Path | None = None, policy: ReadPolicy = ReadPolicy(),
                      test_root: str | Path | None = None) -> FolderSource:
    """A folder with one sub-folder per class (sorted names = class indices), or a split file.

    ``split="test"`` reads ``test_root`` (a folder of class sub-folders named as the training
    folder's: ``train/<class>/`` beside ``test/<class>/``) or ``test_split_file`` (e.g. ImageNet-LT's
    ImageNet_LT_test.txt, paths relative to the same root), with the classes of the training data.
    """
    if root is None:
        raise DataError("data.root must point to the image folder")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    if split == "test" and test_root:
        return _test_folders(load_image_folder(root, split_file, policy=policy), Path(test_root), policy)
    if split == "test":
        if not test_split_file:
            raise DataError("an image folder's test split is data.image_folder.test_root (a folder of class "
                            "sub-folders) or data.image_folder.test_split_file (lines 'relative/path label', e.g. "
                            "ImageNet_LT_test.txt); neither is set: set one, or use the train split")
        train = load_image_folder(root, split_file, policy=policy)
        paths, labels = read_split_file(test_split_file, root, train.num_classes, policy)
        return FolderSource(root, paths, labels, train.num_classes, train.class_names, policy)
    if split_file:
        paths, labels = read_split_file(split_file, root, policy=policy)
        num_classes = int(labels.max()) + 1
        return FolderSource(root, paths, labels, num_classes, [str(c) for c in range(num_classes)], policy)
    return _class_folders(root, policy)


def load_split_of(data: DataConfig, split: str) -> ImageSource:
    """The ``data.name=image_folder`` loader: the split ``split`` of the folder at ``data.root``."""
    settings: ImageFolderConfig = data.image_folder
    return load_image_folder(data.root, settings.split_file, split, settings.test_split_file,
                             settings.read_policy(data.resolution), settings.test_root)
