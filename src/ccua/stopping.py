"""Stopping on a signal: SIGTERM or SIGUSR1 (what Slurm sends before a time limit, a preemption
or ``scancel``) lets every process finish its step; the trainer then writes one checkpoint and
exits with status 75 (EX_TEMPFAIL, "try again later"), which a job script turns into a requeue.

The handler only records the signal. The processes agree on stopping through the all-reduce of
the loss terms that every step already does (the flag rides along as one more number), so they
all stop after the same step, without a collective of its own. A process that launches others
(``ccua compare``'s workers, a worker's torchrun) passes the signal on and exits 75 as well.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import threading
from types import FrameType
from typing import Iterator

log = logging.getLogger(__name__)

#: the exit status of a run stopped by a signal after writing its checkpoint (sysexits.h EX_TEMPFAIL)
REQUEUE_EXIT_CODE = 75
#: the file a stopped run leaves in its folder (step, signal, checkpoint), removed when it starts
#: again: under torchrun, which exits 1 for a stopped worker, a job script asks this file
STOP_MARKER = "stopped.json"
#: the signals that stop training gracefully (SIGUSR1 where the platform has it)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name))


class StoppedBySignal(SystemExit):
    """Work stopped on a signal, leaving what the same command resumes from; exits with
    :data:`REQUEUE_EXIT_CODE`. A SystemExit, so that it ends the program wherever it is raised
    instead of being taken for one failed job among others."""

    def __init__(self, message: str):
        super().__init__(REQUEUE_EXIT_CODE)
        self.message = message

    def __str__(self) -> str:
        return self.message


class TrainingInterrupted(StoppedBySignal):
    """Training stopped on a signal after writing a checkpoint (the CLI, a job of ``ccua compare``)."""


class StopSignals:
    """While entered, the stop signals only record themselves (``received``: the first one's name).

    Handlers can be installed only in the main thread; elsewhere the signals keep their handlers
    and ``received`` stays None. The previous handlers come back on exit, except after one of the
    exceptions ``ending``, which end the process anyway: the signals then stay recorded, so that a
    launcher's SIGTERM (torchrun sends one as soon as it sees a worker die) cannot kill the process
    before it has reported the error.
    """

    def __init__(self, ending: tuple[type[BaseException], ...] = ()):
        self.received: str | None = None
        self.ending = ending
        self._previous: dict[int, object] = {}

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, error_type: type[BaseException] | None, *exc_info) -> None:
        if error_type is None or not issubclass(error_type, self.ending):
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
        self._previous.clear()


def wait_passing_on_stop(process: subprocess.Popen, stop: StopSignals) -> int:
    """Wait for ``process`` and return its status; a stop signal ``stop`` records meanwhile is passed
    on to it once, as SIGTERM (torchrun hands it to its trainings, which write a checkpoint), so a
    launcher that is stopped never leaves its child training on alone."""
    passed_on = False
    while True:
        try:
            return process.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            if stop.received and not passed_on:
                process.send_signal(signal.SIGTERM)
                passed_on = True


@contextlib.contextmanager
def stopping_at_once(what: str, error: type[StoppedBySignal] = StoppedBySignal) -> Iterator[None]:
    """Within the block a stop signal raises ``error`` (exit status 75) at once, and the error is
    logged: for work that leaves nothing half-written to resume from (an evaluation writes its files
    whole or not at all). Handlers installed inside the block (a training's :class:`StopSignals`)
    take over while they are entered. Outside the main thread: no change."""
    raised: list[StoppedBySignal] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        raised.append(error(f"stopped by {signal.Signals(signum).name} during {what}: the same command resumes"))
        raise raised[-1]

    if threading.current_thread() is not threading.main_thread():  # handlers belong to the main thread
        yield
        return
    previous = {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}
    try:
        yield
    except StoppedBySignal as stopped:
        if stopped in raised:  # logged here, not in the handler; others were logged where they arose
            log.warning("%s", stopped)
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


__all__ = ["REQUEUE_EXIT_CODE", "STOP_MARKER", "STOP_SIGNALS", "StopSignals", "StoppedBySignal", "TrainingInterrupted",
           "stopping_at_once", "wait_passing_on_stop"]
