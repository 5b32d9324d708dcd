"""Faults of a real torchrun launch (two gloo processes on CPU): SIGTERM to torchrun stops the run
with one checkpoint and a stop marker (torchrun itself exits 1, not 75); a worker killed without
warning leaves the other with one line naming the lost process and how to resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ccua.checkpoint import list_checkpoints
from ccua.launch import TORCH_VARIABLES
from ccua.stopping import STOP_MARKER
from tests.conftest import tiny_config_dict


def _launch(tmp_path: Path, steps: int) -> tuple[subprocess.Popen, Path]:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tmp_path / "runs", train={"steps": steps, "ckpt_every": 10_000,
                                                                                "log_every": 1})))
    run_dir = tmp_path / "runs" / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "ccua.cli", "train", str(config), "--run-dir", str(run_dir), "--resume", "auto"]
    env = {key: value for key, value in os.environ.items() if key not in TORCH_VARIABLES}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), run_dir


def _wait_for_training(run_dir: Path, launcher: subprocess.Popen, timeout: float = 240) -> None:
    """Until the run has logged a few steps."""
    deadline = time.monotonic() + timeout
    log = run_dir / "losses.jsonl"
    while time.monotonic() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= 3:
            return
        assert launcher.poll() is None, launcher.communicate()
        time.sleep(0.2)
    raise AssertionError("the launch did not start training")


def _workers(launcher: subprocess.Popen) -> list[int]:
    """The pids of the processes torchrun started (its children)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == launcher.pid:
                children.append(int(entry.name))
    return sorted(children)


def test_sigterm_to_torchrun_stops_with_a_checkpoint_and_a_stop_marker(tmp_path):
    launcher, run_dir = _launch(tmp_path, steps=100_000)
    _wait_for_training(run_dir, launcher)
    launcher.send_signal(signal.SIGTERM)
    out, err = launcher.communicate(timeout=180)
    assert launcher.returncode == 1, (out, err)  # torchrun's own status for stopped workers: not 75
    marker = json.loads((run_dir / STOP_MARKER).read_text())
    assert marker["signal"] == "SIGTERM"
    assert [int(p.stem) for p in list_checkpoints(run_dir / "checkpoints")] == [marker["step"]]


def test_a_worker_killed_without_warning_leaves_one_line_naming_it(tmp_path):
    launcher, run_dir = _launch(tmp_path, steps=100_000)
    _wait_for_training(run_dir, launcher)
    workers = _workers(launcher)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)
    out, err = launcher.communicate(timeout=180)
    assert launcher.returncode != 0
    lines = [line for line in err.splitlines() if line.startswith("ccua: error:")]
    assert lines and "of the launch was lost" in lines[0] and "--resume auto" in lines[0], err[-3000:]
    assert "Traceback" not in "\n".join(line for line in err.splitlines() if "ccua" in line), err[-3000:]


def test_a_stop_signal_to_ccua_compare_reaches_the_training_under_its_torchrun(tmp_path):
    """`ccua compare --gpus-per-run`: SIGTERM to the comparison alone (a `kill`, or Slurm signalling
    its batch step) is passed on through torchrun; the run checkpoints and the comparison exits 75
    with nothing of the launch left running."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tmp_path / "unused", train={"ckpt_every": 10_000,
                                                                                  "log_every": 1})))
    out = tmp_path / "cmp"
    command = [sys.executable, "-m", "ccua.cli", "compare", str(config), "--methods", "plain", "--steps", "100000",
               "--gpus-per-run", "1", "--device", "cpu", "--features", "random", "--out", str(out)]
    env = {key: value for key, value in os.environ.items() if key not in TORCH_VARIABLES}
    env["OMP_NUM_THREADS"] = "1"
    comparison = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = out / "runs" / "plain-s0"
    try:
        _wait_for_training(run_dir, comparison)
        comparison.send_signal(signal.SIGTERM)
        _, err = comparison.communicate(timeout=180)
        assert comparison.returncode == 75, err[-3000:]
        marker = json.loads((run_dir / STOP_MARKER).read_text())
        assert marker["signal"] == "SIGTERM"
        assert [int(p.stem) for p in list_checkpoints(run_dir / "checkpoints")] == [marker["step"]]
        assert "plain-s0: stopped by SIGTERM" in err
        assert _processes_naming(run_dir) == [], "a process of the launch outlived the comparison"
    finally:
        comparison.kill()
        for pid in _processes_naming(run_dir):  # a failed test leaves no training behind
            os.kill(pid, signal.SIGKILL)


def _processes_naming(path: Path) -> list[int]:
    """The processes whose command line names ``path``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(path) in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                found.append(int(entry.name))
        except (OSError, UnicodeDecodeError):
            continue
    return found
