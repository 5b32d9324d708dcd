"""Result files written whole or not at all, and folders one process at a time.

Every result file (metrics, sample sets, reports, feature caches) is written to a temporary name
in its own folder and renamed over the real name, so a crash or a full disk never leaves a
truncated file under the real name. A folder that one command writes into for a long time (a
comparison's output, a run) is held with an advisory lock, so a second command on it stops with
one line instead of writing beside the first.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

from ccua.config import ConfigError

LOCK_FILE = ".lock"


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """An open temporary file beside ``path`` that becomes ``path`` when the block ends without an
    error; on an error (a full disk included) it is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, mode) as stream:
            yield stream
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(error, OSError) and error.filename is None:  # say which file could not be written
            raise OSError(error.errno, error.strerror or str(error), str(path)) from None
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file (see :func:`atomic_file`)."""
    with atomic_file(path, "w") as stream:
        stream.write(text)
    return Path(path)


@contextlib.contextmanager
def folder_lock(folder: str | Path, holder: str) -> Iterator[None]:
    """Hold ``folder`` for this process while the block runs (an advisory lock on ``folder/.lock``).

    A second holder gets a ConfigError naming the folder and the process that has it. The lock
    ends with the process, so a killed command leaves nothing to clean up.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / LOCK_FILE
    stream = open(lock_path, "a+")
    try:
        owner = _holder_if_locked(stream, fcntl.LOCK_EX)
        if owner is not None:
            raise ConfigError(f"{folder} is in use by {owner}: wait until it ends, or use another folder")
        stream.seek(0)
        stream.truncate()
        stream.write(f"{holder} (pid {os.getpid()})")
        stream.flush()
        yield
    finally:
        stream.close()  # closing the file releases the lock


def folder_holder(folder: str | Path) -> str | None:
    """Who holds ``folder``'s :func:`folder_lock` now (as its holder wrote it), or None when no
    process does. Asks with a shared lock, so it never takes the folder from anyone."""
    lock_path = Path(folder) / LOCK_FILE
    if not lock_path.is_file():
        return None
    with open(lock_path) as stream:
        return _holder_if_locked(stream, fcntl.LOCK_SH)


def _holder_if_locked(stream: IO[str], mode: int) -> str | None:
    """Take ``mode`` (LOCK_EX or LOCK_SH) on the lock file ``stream`` without waiting: None when it
    was taken, else the holder its owner wrote there."""
    try:
        fcntl.flock(stream.fileno(), mode | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise
        stream.seek(0)
        return stream.read().strip() or "another process"
    return None


__all__ = ["LOCK_FILE", "atomic_file", "folder_holder", "folder_lock", "write_text_atomic"]

