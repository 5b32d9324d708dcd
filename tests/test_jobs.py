"""Jobs side by side: dependencies, priority, failures that do not stop the others."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ccua.jobs import Job, run_jobs, threads_per_job


def _graph() -> list[Job]:
    return [Job("root", math.sqrt, (16.0,)),
            Job("broken", int, ("not a number",)),
            Job("child", math.pow, (2.0, 3.0), after=("root",)),
            Job("orphan", math.sqrt, (9.0,), after=("broken",)),
            Job("grandchild", abs, (-5,), after=("child", "root"))]


@pytest.mark.parametrize("workers", [1, 2])
def test_dependants_of_a_failed_job_are_skipped_and_the_rest_run(workers):
    results = {r.name: r for r in run_jobs(_graph(), workers)}
    assert results["root"].value == 4.0 and results["child"].value == 8.0 and results["grandchild"].value == 5
    assert results["broken"].error.startswith("ValueError")
    assert results["orphan"].error == "skipped: broken failed" and results["orphan"].value is None


def test_results_come_in_job_order():
    jobs = [Job(f"j{i}", math.sqrt, (float(i * i),)) for i in range(5)]
    assert [r.value for r in run_jobs(jobs, workers=2)] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_dependencies_must_come_first_and_names_be_unique():
    with pytest.raises(ValueError, match="not earlier in the list"):
        run_jobs([Job("a", abs, (1,), after=("b",)), Job("b", abs, (2,))])
    with pytest.raises(ValueError, match="unique"):
        run_jobs([Job("a", abs, (1,)), Job("a", abs, (2,))])


def test_threads_are_shared_out_evenly():
    assert threads_per_job(2, cores=2) == 1
    assert threads_per_job(3, cores=8) == 2
    assert threads_per_job(4, cores=2) == 1


def _write_pid_and_sleep(folder: str) -> None:
    import os
    import time
    from pathlib import Path

    (Path(folder) / str(os.getpid())).touch()
    time.sleep(120)


def _write_pid_and_stop_on_signal(folder: str) -> None:
    """A training's way with SIGTERM: record it, finish the step, stop with TrainingInterrupted."""
    import os
    import time
    from pathlib import Path

    from ccua.training.preemption import StopSignals, TrainingInterrupted

    with StopSignals() as stop:
        (Path(folder) / str(os.getpid())).touch()
        deadline = time.monotonic() + 120
        while stop.received is None and time.monotonic() < deadline:
            time.sleep(0.05)
    raise TrainingInterrupted(f"stopped by {stop.received}")


def _gone(pid: int) -> bool:
    from pathlib import Path

    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().split(")")[-1].split()[0] == "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
@pytest.mark.parametrize("job", ["_write_pid_and_sleep", "_write_pid_and_stop_on_signal"])
def test_workers_end_with_the_main_process_even_after_kill_9(tmp_path, job):
    """A killed `ccua compare` must not leave workers training on into its run folders, nor
    workers that stopped their training cleanly waiting for a next job that never comes."""
    script = ("from ccua.jobs import Job, run_jobs\n"
              f"from tests.test_jobs import {job}\n"
              f"run_jobs([Job(n, {job}, ({str(tmp_path)!r},)) for n in 'ab'], workers=2)\n")
    main = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parent.parent)
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = [int(p.name) for p in tmp_path.iterdir()]
        assert len(workers) == 2, "the workers never started their jobs"
        main.kill()
        main.wait()
        deadline = time.monotonic() + 30
        while not all(_gone(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all(_gone(pid) for pid in workers)
    finally:
        main.kill()
        for pid in workers if "workers" in locals() else []:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
