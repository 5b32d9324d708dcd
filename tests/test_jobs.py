"""Jobs side by side: dependencies, priority, failures that do not stop the others."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
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


def _write_pid_and_stop_on_signal(folder: str, stops: str | None = None) -> None:
    """A training's way with SIGTERM: record it, finish the step, stop with TrainingInterrupted
    (after writing ``stops``/<pid>, as a training writes its checkpoint, when given)."""
    import os
    import time
    from pathlib import Path

    from ccua.stopping import StopSignals, TrainingInterrupted

    with StopSignals() as stop:
        (Path(folder) / str(os.getpid())).touch()
        deadline = time.monotonic() + 120
        while stop.received is None and time.monotonic() < deadline:
            time.sleep(0.05)
    if stops and stop.received:
        (Path(stops) / str(os.getpid())).write_text(stop.received)
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


def _wait_for_files(folder: Path, count: int, seconds: float = 120) -> list[Path]:
    deadline = time.monotonic() + seconds
    while len(list(folder.iterdir())) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    return list(folder.iterdir())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="worker process ids from /proc: Linux")
@pytest.mark.parametrize("job", ["_write_pid_and_sleep", "_write_pid_and_stop_on_signal"])
def test_a_stop_signal_to_the_main_process_stops_every_job_and_exits_75(tmp_path, job):
    """SIGTERM to `ccua compare` (Slurm's, before a time limit) reaches the workers: a training
    stops cleanly, anything else ends; no job starts after it, and the status asks for a requeue."""
    started, stops = tmp_path / "started", tmp_path / "stops"
    started.mkdir()
    stops.mkdir()
    script = ("from ccua.jobs import Job, run_jobs\n"
              f"from tests.test_jobs import {job}\n"
              f"args = ({str(started)!r},) + (({str(stops)!r},) if {job!r} != '_write_pid_and_sleep' else ())\n"
              f"run_jobs([Job(n, {job}, args) for n in 'abc'], workers=2)\n")
    main = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parent.parent,
                            stderr=subprocess.PIPE, text=True)
    try:
        workers = [int(p.name) for p in _wait_for_files(started, 2)]
        assert len(workers) == 2, "the workers never started their jobs"
        main.send_signal(signal.SIGTERM)
        _, stderr = main.communicate(timeout=60)
        assert main.returncode == 75, stderr
        assert "The same command resumes" in stderr and "1 not started" in stderr
        assert len(list(started.iterdir())) == 2  # job c never started
        assert all(_gone(pid) for pid in workers)
        if job == "_write_pid_and_stop_on_signal":  # each training's clean stop ran (its checkpoint)
            assert sorted(int(p.name) for p in stops.iterdir()) == sorted(workers)
            assert {p.read_text() for p in stops.iterdir()} == {"SIGTERM"}
    finally:
        main.kill()
        for pid in workers if "workers" in locals() else []:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)


def _sleep_then_write(folder: str) -> None:
    import time
    from pathlib import Path

    time.sleep(120)
    (Path(folder) / "written").touch()


def test_a_stop_signal_ends_a_job_run_in_the_main_process_at_once_with_status_75(tmp_path):
    """With one job at a time the jobs run in the main process: an evaluation there must not hold
    a time limit's signal for minutes, nor the next job start."""
    script = ("import os, pathlib\n"
              "from ccua.jobs import Job, run_jobs\n"
              "from tests.test_jobs import _sleep_then_write\n"
              f"pathlib.Path({str(tmp_path / 'pid')!r}).write_text(str(os.getpid()))\n"
              f"run_jobs([Job(n, _sleep_then_write, ({str(tmp_path)!r},)) for n in 'ab'], workers=1)\n")
    main = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parent.parent,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for_files(tmp_path, 1, seconds=60), "the script never started"
        time.sleep(1.0)  # into the first job
        main.send_signal(signal.SIGTERM)
        _, stderr = main.communicate(timeout=30)
        assert main.returncode == 75, stderr
        assert not (tmp_path / "written").exists()
    finally:
        main.kill()


def test_a_stop_signal_is_passed_on_to_a_launched_process_once(tmp_path):
    """A compare worker waiting for torchrun passes a stop on to it, so the training under it
    writes its checkpoint instead of running on alone."""
    from ccua.stopping import StopSignals, wait_passing_on_stop

    ready, received = tmp_path / "ready", tmp_path / "received"
    child = ("import pathlib, signal, sys, time\n"
             "def stop(signum, frame):\n"
             f"    pathlib.Path({str(received)!r}).open('a').write(signal.Signals(signum).name + '\\n')\n"
             "    time.sleep(1.0)\n"  # a second signal, if one came, would be recorded meanwhile
             "    sys.exit(3)\n"
             "signal.signal(signal.SIGTERM, stop)\n"
             f"pathlib.Path({str(ready)!r}).touch()\n"
             "time.sleep(60)\n")

    def signal_this_process_once_the_child_is_ready() -> None:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    with StopSignals() as stop:
        launched = subprocess.Popen([sys.executable, "-c", child])
        sender = threading.Thread(target=signal_this_process_once_the_child_is_ready)
        sender.start()
        status = wait_passing_on_stop(launched, stop)
        sender.join()
    assert stop.received == "SIGTERM"
    assert status == 3 and received.read_text() == "SIGTERM\n"
