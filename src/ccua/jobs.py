"""Jobs side by side: K worker processes, each with its share of the CPU cores or its GPU.

On a CPU, K small trainings at cores/K threads each beat one after another at all cores (their
threads do not fight); running several multi-threaded jobs at once is far slower than either
alone, so every worker gets ``threads_per_job`` threads. With CUDA, worker i uses GPU i mod #GPUs;
a job that launches processes of its own (a training under torchrun) takes its GPUs from its
worker's slot (:func:`worker_slot`). A job may wait for others (``after``): it starts once they
have succeeded, and is skipped if one failed. Among the jobs ready to start, the earliest in the
list goes first, so the list order is the priority. A job that fails is reported with its name
and does not stop the others. On Linux the workers do not outlive the main process: when it ends
(``kill``, even ``kill -9``), each worker gets SIGTERM, on which a training writes a checkpoint and
stops, so the next call resumes it and no orphan keeps writing into a run folder. A worker whose
main process is gone exits after its job, whatever the job did with the signal.

A stop signal to the main process (SIGTERM or SIGUSR1: what Slurm sends before a time limit or on
preemption) is passed on to the workers as SIGTERM; no further job starts, the running ones stop
(a training after writing its checkpoint) and :class:`JobsStopped` ends the program with status 75,
as a stopped training does, so a job script requeues the same command and it resumes.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable

from ccua.stopping import StopSignals, StoppedBySignal, stopping_at_once

log = logging.getLogger(__name__)


class JobsFailed(RuntimeError):
    """Some jobs failed; the message names each with its error (the others' results were kept)."""


class JobsStopped(StoppedBySignal):
    """A stop signal ended the jobs before all had run: the running ones were stopped (a training
    writes its checkpoint first), the rest not started; exits with status 75, and the same command
    resumes."""


@dataclass
class Job:
    """A named call ``function(*args)``; ``function`` must be importable (a module-level function)."""

    name: str
    function: Callable[..., Any]
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    after: tuple[str, ...] = ()  # names of jobs (earlier in the list) that must succeed first


@dataclass
class JobResult:
    name: str
    value: Any = None
    error: str | None = None


def available_cores() -> int:
    """CPU cores this process may use (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def threads_per_job(jobs: int, cores: int | None = None) -> int:
    """Cores divided evenly among ``jobs`` side-by-side jobs, at least 1."""
    return max(1, (cores or available_cores()) // max(1, jobs))


_slot = 0  # this worker's number among the side-by-side workers (0 in the main process)
_parent: int | None = None  # the main process's id, in a worker


def worker_slot() -> int:
    """The number of the worker running the current job: 0 .. workers - 1 (0 without workers)."""
    return _slot


def _end_with_parent(parent: int) -> None:
    """Ask the kernel for SIGTERM when the main process ends (Linux; elsewhere nothing)."""
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # it ended before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _init_worker(threads: int, counter: Any, log_level: int, parent: int) -> None:
    import torch

    global _slot, _parent

    _parent = parent
    _end_with_parent(parent)
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s [worker] %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    _slot = index
    if torch.cuda.is_available():
        torch.cuda.set_device(index % torch.cuda.device_count())


def run_jobs(jobs: list[Job], workers: int = 1) -> list[JobResult]:
    """Run every job, ``workers`` at a time (1: in this process, in order). Results in job order."""
    names = [job.name for job in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"job names must be unique: {names}")
    for index, job in enumerate(jobs):  # dependencies come first: the list is a valid running order
        later = [dep for dep in job.after if dep not in names[:index]]
        if later:
            raise ValueError(f"job {job.name!r} waits for {later}, which are not earlier in the list")
    results: dict[str, JobResult] = {}
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:  # here, in order
            # a job here (an evaluation) ends at once on a stop signal; a training installs its own
            # handlers meanwhile, and stops after its step with a checkpoint instead
            with stopping_at_once(job.name, JobsStopped):
                results[job.name] = _skipped(job, results) or _run_here(job)
    else:
        results = _run_in_workers(jobs, workers)
    return [results[job.name] for job in jobs]


def _run_in_workers(jobs: list[Job], workers: int) -> dict[str, JobResult]:
    """The jobs in ``workers`` processes, started in list order as their dependencies finish.

    A stop signal to this process, or a training's stop in a worker, is passed on to every worker;
    then no job starts, and once the running ones have ended :class:`JobsStopped` is raised."""
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch thread pools
    counter = context.Value("i", 0)
    threads = threads_per_job(workers)
    log.info("running %d jobs, %d at a time, %d thread(s) each", len(jobs), workers, threads)
    results: dict[str, JobResult] = {}
    waiting, running = list(jobs), {}
    stopped_by: str | None = None  # the stop signal, to this process or to a worker's training
    with StopSignals() as stop, ProcessPoolExecutor(
            max_workers=workers, mp_context=context, initializer=_init_worker,
            initargs=(threads, counter, logging.getLogger().getEffectiveLevel(), os.getpid())) as pool:
        while (waiting and not stopped_by) or running:
            if not stopped_by:
                _start_ready(waiting, running, results, pool, workers)
            if not running:
                continue
            # a short timeout: the signal handler only records a stop; it is passed on from here
            done, _ = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
            if stop.received and not stopped_by:
                stopped_by = stop.received
                _stop_workers(stopped_by, running)
            for future in done:
                job = running.pop(future)
                results[job.name] = _outcome(job, future, stopped=stopped_by is not None)
                if results[job.name].error == _STOPPED and not stopped_by:  # a worker's training got the signal
                    stopped_by = f"a stop signal to the worker of {job.name}"
                    _stop_workers(stopped_by, running)
    if stopped_by:
        raise _stopped(stopped_by, results, [job.name for job in waiting])
    return results


def _start_ready(waiting: list[Job], running: dict[Future, Job], results: dict[str, JobResult],
                 pool: ProcessPoolExecutor, workers: int) -> None:
    """Skip what can never run, start what can while a worker is free, in list order."""
    for job in list(waiting):
        skipped = _skipped(job, results)
        if skipped:
            results[job.name] = skipped
            waiting.remove(job)
        elif len(running) < workers and all(dep in results for dep in job.after):
            running[pool.submit(_call_in_worker, job.function, job.args, job.kwargs)] = job
            waiting.remove(job)


#: the error of a job that a stop signal ended
_STOPPED = "stopped by a signal"


def _outcome(job: Job, future: Future, stopped: bool) -> JobResult:
    """The job's value, or its error (one failed run does not stop the others); a job ended by a
    stop signal (a training that wrote its checkpoint, or any job's worker once ``stopped``) has
    the error :data:`_STOPPED`."""
    try:
        value = future.result()
    except StoppedBySignal:
        return JobResult(job.name, error=_STOPPED)
    except Exception as error:  # noqa: BLE001
        if stopped:
            log.warning("stopped: %s", job.name)
            return JobResult(job.name, error=_STOPPED)
        log.error("failed: %s: %s", job.name, error)
        return JobResult(job.name, error=f"{type(error).__name__}: {error}")
    log.info("finished: %s", job.name)
    return JobResult(job.name, value=value)


def _stop_workers(reason: str, running: dict[Future, Job]) -> None:
    """SIGTERM to every worker: a training finishes its step and writes a checkpoint; any other
    job ends (its result files are written whole or not at all)."""
    log.warning("stopping (%s): %s", reason, ", ".join(job.name for job in running.values()) or "no job running")
    for worker in multiprocessing.active_children():
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGTERM)


def _stopped(reason: str, results: dict[str, JobResult], not_started: list[str]) -> JobsStopped:
    finished = sum(result.error is None for result in results.values())
    message = (f"stopped by {reason}: {finished} job(s) had finished, {len(not_started)} not started; running "
               "trainings wrote a checkpoint. The same command resumes")
    log.warning(message)
    return JobsStopped(message)


def _call_in_worker(function: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> Any:
    """``function(*args, **kwargs)``, then exit if the main process has ended meanwhile.

    A job may turn the parent-death SIGTERM into a clean stop (a training checkpoints and raises
    SystemExit); the pool would send that outcome to nobody and wait for the next job forever.
    """
    try:
        return function(*args, **kwargs)
    finally:
        if _parent is not None and os.getppid() != _parent:
            logging.shutdown()
            os._exit(1)


def _skipped(job: Job, results: dict[str, JobResult]) -> JobResult | None:
    """A result saying why ``job`` cannot run (a job it waits for failed), else None."""
    failed = [dep for dep in job.after if dep in results and results[dep].error is not None]
    return JobResult(job.name, error=f"skipped: {', '.join(failed)} failed") if failed else None


def _run_here(job: Job) -> JobResult:
    try:
        return JobResult(job.name, value=job.function(*job.args, **job.kwargs))
    except Exception as error:  # noqa: BLE001 - reported with the job's name by the caller
        log.error("failed: %s: %s", job.name, error)
        return JobResult(job.name, error=f"{type(error).__name__}: {error}")


__all__ = ["Job", "JobResult", "JobsFailed", "JobsStopped", "available_cores", "run_jobs", "threads_per_job",
           "worker_slot"]
