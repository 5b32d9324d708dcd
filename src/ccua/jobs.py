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
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger(__name__)


class JobsFailed(RuntimeError):
    """Some jobs failed; the message names each with its error (the others' results were kept)."""


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
        for job in jobs:
            results[job.name] = _skipped(job, results) or _run_here(job)
        return [results[job.name] for job in jobs]
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch thread pools
    counter = context.Value("i", 0)
    threads = threads_per_job(workers)
    log.info("running %d jobs, %d at a time, %d thread(s) each", len(jobs), workers, threads)
    waiting = list(jobs)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                             initargs=(threads, counter, logging.getLogger().getEffectiveLevel(), os.getpid())) as pool:
        running: dict[Future, Job] = {}
        while waiting or running:
            for job in list(waiting):  # skip what can never run, start what can, in list order
                skipped = _skipped(job, results)
                if skipped:
                    results[job.name] = skipped
                    waiting.remove(job)
                elif len(running) < workers and all(dep in results for dep in job.after):
                    running[pool.submit(_call_in_worker, job.function, job.args, job.kwargs)] = job
                    waiting.remove(job)
            if not running:
                continue
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                job = running.pop(future)
                try:
                    results[job.name] = JobResult(job.name, value=future.result())
                    log.info("finished: %s", job.name)
                except Exception as error:  # noqa: BLE001 - one failed run must not stop the others
                    results[job.name] = JobResult(job.name, error=f"{type(error).__name__}: {error}")
                    log.error("failed: %s: %s", job.name, error)
    return [results[job.name] for job in jobs]


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


__all__ = ["Job", "JobResult", "JobsFailed", "available_cores", "run_jobs", "threads_per_job", "worker_slot"]
