"""Progress bars that suit both a terminal and a log file.

A terminal redraws a bar in place; a log file (``nohup ... > log``, a Slurm output file, the
workers of ``ccua compare``) keeps every redraw as text, so there a bar redraws at most every
30 seconds: enough to see a long job move, without thousands of lines.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm

#: seconds between redraws when the bar writes to a log file rather than a terminal
LOG_FILE_INTERVAL = 30.0


def progress_bar(*args: Any, **kwargs: Any) -> tqdm:
    """``tqdm(*args, **kwargs)``, redrawn at most every 30 s when it does not write to a terminal."""
    stream = kwargs.get("file") or sys.stderr
    if not _is_terminal(stream):
        kwargs.setdefault("mininterval", LOG_FILE_INTERVAL)
    return tqdm(*args, **kwargs)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


__all__ = ["LOG_FILE_INTERVAL", "progress_bar"]
