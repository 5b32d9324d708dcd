"""Checkpoints: written atomically, the newest K kept, loaded without running pickled code.

A failed write (disk full, read-only folder, a signal mid-write) removes its temporary file and
leaves the previous checkpoints as they were; a file that cannot be read as a checkpoint is named
with what is wrong with it, in one line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import random
import re
import signal
import threading
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

log = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^(\d{7,})\.pt$")
TEMPORARY_SUFFIX = ".pt.tmp"

#: what every checkpoint written by the trainer holds; sampling and evaluation need these
REQUIRED_KEYS = ("model", "config", "step", "class_counts", "data_shape")
#: what resuming training needs on top of them
RESUME_KEYS = REQUIRED_KEYS + ("ema", "optimizer", "scheduler", "rng")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or read; the message names the file and the cause."""


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"{step:07d}.pt"


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints in ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete ``*.pt.tmp`` files a killed process left in ``folder``; returns what was removed."""
    if not folder.is_dir():
        return []
    stale = sorted(folder.glob(f"*{TEMPORARY_SUFFIX}"))
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log.warning("removed %d partial checkpoint file(s) of an interrupted write: %s", len(stale),
                    ", ".join(p.name for p in stale))
    return stale


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """Within the block SIGTERM raises SystemExit (SIGINT already raises KeyboardInterrupt), so a
    write interrupted by either can clean up. Only where SIGTERM would otherwise kill the process
    outright: a handler installed by the caller (the trainer's graceful stop, which lets the write
    complete and stops after it) stays. Only the main thread may install handlers."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def _raise(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def save_checkpoint(state: dict, folder: Path, step: int, keep: int) -> Path:
    """Write ``state`` as ``folder/<step>.pt`` via a temporary file, then drop all but the newest ``keep``.

    CheckpointError naming the file and the OS error when the write fails; the temporary file is
    removed on any failure or signal, and the older checkpoints are untouched.
    """
    path = checkpoint_path(folder, step)
    tmp = path.with_suffix(TEMPORARY_SUFFIX)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with _signals_raise():
            try:
                torch.save(state, tmp)
                os.replace(tmp, path)  # a crash mid-write leaves the previous checkpoint intact
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
    except (OSError, RuntimeError) as error:
        # torch reports a failed write (e.g. a full disk) as a RuntimeError of its zip writer
        raise CheckpointError(f"could not write checkpoint {path}: {_first_line(error)}; "
                              "the previous checkpoints are kept") from error
    except (KeyboardInterrupt, SystemExit):
        log.warning("checkpoint write to %s interrupted; removed the partial file", path)
        raise
    if keep > 0:
        for old in list_checkpoints(folder)[:-keep]:
            old.unlink(missing_ok=True)
    return path


#: how many times its own size a PyTorch archive's entries may declare: torch stores them
#: uncompressed, so a larger expansion is a crafted file (a "zip bomb"), refused before loading
MAX_EXPANSION = 2.0


def check_archive_sizes(path: str | Path, what: str = "checkpoint") -> None:
    """CheckpointError naming ``path`` when the entries of the zip archive declare far more bytes
    than the file holds (:data:`MAX_EXPANSION`); other files are left to ``torch.load``."""
    path = Path(path)
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (OSError, zipfile.BadZipFile):
        return  # torch.load names what is wrong with it
    size = path.stat().st_size
    if declared > MAX_EXPANSION * size + (1 << 20):
        raise CheckpointError(f"{what} {path} declares {declared} bytes of contents in a {size}-byte file: PyTorch "
                              "stores its archives uncompressed, so this is not one it wrote; refused unread")


def load_checkpoint(path: str | Path, required: tuple[str, ...] = REQUIRED_KEYS) -> dict:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers only.

    CheckpointError, one line naming the file, for a file that is missing, truncated, not a
    PyTorch file, holds arbitrary Python objects, or lacks one of ``required``.
    """
    path = Path(path)
    check_archive_sizes(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except OSError as error:
        raise CheckpointError(f"checkpoint {path} cannot be read: {_first_line(error)}") from None
    except Exception as error:  # noqa: BLE001 - torch raises many types for a bad file; one line says which
        raise CheckpointError(f"checkpoint {path} {_unreadable_reason(path, error)}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a ccua checkpoint: it holds a {type(state).__name__}, not the "
                              "dictionary the trainer writes")
    missing = [key for key in required if key not in state]
    if missing:
        held = ", ".join(map(repr, list(state)[:8])) + (", ..." if len(state) > 8 else "")
        raise CheckpointError(f"{path} is not a ccua checkpoint: it lacks {', '.join(map(repr, missing))} "
                              f"(it holds {held or 'nothing'})")
    return state


def checked_header(state: dict, path: str | Path) -> tuple[int, list[int], tuple[int, int, int]]:
    """(step, class counts, data shape) of a loaded checkpoint, each checked for what it must be;
    a CheckpointError naming the file and the key otherwise."""
    def integers(value, key: str, length: int | None = None) -> list[int]:
        values = value.tolist() if isinstance(value, torch.Tensor) else value
        if (not isinstance(values, (list, tuple)) or (length is not None and len(values) != length)
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)):
            wanted = f"{length} non-negative integers" if length else "a list of non-negative integers"
            raise CheckpointError(f"checkpoint {path}: {key!r} must be {wanted}, got {str(values)[:80]}")
        return [int(v) for v in values]

    step = state["step"]
    if isinstance(step, torch.Tensor) and step.numel() == 1 and not step.is_floating_point():
        step = int(step)
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"checkpoint {path}: 'step' must be a non-negative integer, got {step!r}")
    counts = integers(state["class_counts"], "class_counts")
    if not counts:
        raise CheckpointError(f"checkpoint {path}: 'class_counts' is empty")
    shape = integers(state["data_shape"], "data_shape", 3)
    if min(shape) < 1:
        raise CheckpointError(f"checkpoint {path}: 'data_shape' must be 3 positive integers, got {shape}")
    return step, counts, tuple(shape)


def check_weights(weights: object, model: torch.nn.Module, path: str | Path, key: str) -> dict:
    """``weights`` when they are a state dict that fits ``model`` exactly: the same names, shapes and
    floating dtypes, every value finite; else a CheckpointError naming the file and the entry."""
    if not isinstance(weights, dict):
        raise CheckpointError(f"checkpoint {path}: {key!r} is a {type(weights).__name__}, not a state dict")
    expected = model.state_dict()
    missing = [name for name in expected if name not in weights]
    unexpected = [name for name in weights if name not in expected]
    if missing or unexpected:
        which = f"lacks {missing[0]!r}" if missing else f"has {unexpected[0]!r}, which the model has not"
        raise CheckpointError(f"checkpoint {path}: {key} {which} ({len(missing)} missing, {len(unexpected)} "
                              "unexpected entries): it was trained with another model config")
    for name, wanted in expected.items():
        value = weights[name]
        if not isinstance(value, torch.Tensor) or value.shape != wanted.shape:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise CheckpointError(f"checkpoint {path}: {key}.{name} has shape {shape}, the model needs "
                                  f"{tuple(wanted.shape)} (another model config or class count)")
        if wanted.is_floating_point() and not value.is_floating_point():
            raise CheckpointError(f"checkpoint {path}: {key}.{name} is {value.dtype}, the model needs floating "
                                  "point weights")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"checkpoint {path}: {key}.{name} holds NaN or infinite values (a diverged "
                                  "run?): sample or resume an earlier checkpoint")
    return weights


def _unreadable_reason(path: Path, error: Exception) -> str:
    """What is wrong with a file torch.load refused (never advising to unpickle it unsafely)."""
    size = path.stat().st_size if path.exists() else 0
    if size == 0:
        return "is empty (an interrupted write?)"
    if isinstance(error, pickle.UnpicklingError):
        return ("holds Python objects other than tensors and plain containers: it was not written by ccua, "
                "and such files are never unpickled")
    if not zipfile.is_zipfile(path):
        with path.open("rb") as stream:
            if stream.read(2) == b"PK":  # a zip archive whose end is missing
                return f"is truncated or corrupt ({size} bytes; an interrupted write or copy?)"
        return "is not a PyTorch checkpoint file"
    return f"is corrupt ({_first_line(error)})"


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def rng_state() -> dict:
    """The random generators that a training step touches."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state_to_plain(np.random.get_state()),
        "python": _python_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(_plain_to_numpy_state(state["numpy"]))
    random.setstate(_plain_to_python_state(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block (sample grids, proxy FID) without moving the training's random generators,
    so how often it runs does not change the training trajectory."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


# weights_only loading accepts tensors, lists, dicts, numbers and strings: convert the states.
def _numpy_state_to_plain(state: tuple) -> dict:
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _plain_to_numpy_state(plain: dict) -> tuple:
    return (plain["name"], plain["keys"].numpy().astype(np.uint32), plain["pos"], plain["has_gauss"],
            plain["cached"])


def _python_state_to_plain(state: tuple) -> dict:
    version, internal, gauss = state
    return {"version": version, "internal": list(internal), "gauss": gauss}


def _plain_to_python_state(plain: dict) -> tuple:
    return (plain["version"], tuple(plain["internal"]), plain["gauss"])
