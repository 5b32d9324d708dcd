"""Stopping on SIGTERM / SIGUSR1: one checkpoint, exit status 75, and `--resume auto` continues exactly."""

import json
import os
import random
import signal

import pytest
import torch
import yaml

import ccua.checkpoint as checkpoint_module
import ccua.training.trainer as trainer_module
from ccua.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from ccua.cli import main
from ccua.runs import claim_run_dir
from ccua.stopping import REQUEUE_EXIT_CODE, STOP_MARKER, StopSignals
from tests.conftest import tiny_config_dict

STEPS = 6


def _config_file(tmp_path, name: str) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(tmp_path / name, train={"steps": STEPS, "ckpt_every": 4})))
    return str(path)


def _signal_during_step(monkeypatch, step: int, signum: int) -> None:
    """Send ``signum`` to this process from inside the forward pass of training step ``step``."""
    real, calls = trainer_module.training_losses, []

    def losses_then_signal(*args, **kwargs):
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "training_losses", losses_then_signal)


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM])
def test_a_stop_signal_writes_one_checkpoint_exits_75_and_resume_auto_is_exact(tmp_path, monkeypatch, caplog, signum):
    stop_at = random.randint(1, STEPS - 1)  # a step at random; printed with any failure
    assert main(["train", _config_file(tmp_path, "whole"), "--resume", "auto"]) == 0

    config = _config_file(tmp_path, "stopped")
    with monkeypatch.context() as patch:
        _signal_during_step(patch, stop_at, signum)
        with pytest.raises(SystemExit) as stopped:
            main(["train", config, "--resume", "auto"])
    assert stopped.value.code == REQUEUE_EXIT_CODE, f"signal at step {stop_at}"
    assert f"stopped by {signal.Signals(signum).name} after step {stop_at}: wrote checkpoint" in caplog.text
    checkpoints = list_checkpoints(tmp_path / "stopped" / "000-tiny" / "checkpoints")
    assert [int(p.stem) for p in checkpoints] == sorted({4, stop_at} - ({4} if stop_at < 4 else set()))
    assert signal.getsignal(signum) is signal.SIG_DFL  # the handlers are given back
    marker = json.loads((tmp_path / "stopped" / "000-tiny" / STOP_MARKER).read_text())
    assert marker["step"] == stop_at and marker["signal"] == signal.Signals(signum).name

    assert main(["train", config, "--resume", "auto"]) == 0  # the requeued job: the same command line
    assert not (tmp_path / "stopped" / "000-tiny" / STOP_MARKER).exists()  # this launch was not stopped
    assert sorted(p.name for p in (tmp_path / "stopped").iterdir()) == ["000-tiny"]
    whole = load_checkpoint(list_checkpoints(tmp_path / "whole" / "000-tiny" / "checkpoints")[-1])
    resumed = load_checkpoint(checkpoints[-1].parent / f"{STEPS:07d}.pt")
    for key in ("model", "ema"):
        for name, value in whole[key].items():
            assert torch.equal(value, resumed[key][name]), f"{key}.{name} differs (signal at step {stop_at})"
    rows = [json.loads(line)["step"] for line in (tmp_path / "stopped" / "000-tiny" / "losses.jsonl").open()]
    assert rows == [2, 4, 6], f"signal at step {stop_at}"


def test_resume_auto_reuses_the_folder_of_a_launch_killed_before_its_first_checkpoint(tmp_path):
    killed = claim_run_dir(tmp_path / "runs", "tiny")  # a launch killed (SIGKILL) before any checkpoint
    (killed / "losses.jsonl").write_text(json.dumps({"step": 2, "total": 9.0}) + "\n")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tmp_path / "runs", train={"steps": 1, "log_every": 1})))
    assert main(["train", str(config), "--resume", "auto"]) == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["000-tiny"]  # no empty 000 beside a new 001
    rows = [json.loads(line) for line in (killed / "losses.jsonl").open()]
    assert [row["step"] for row in rows] == [1] and rows[0]["total"] != 9.0
    assert [p.name for p in list_checkpoints(killed / "checkpoints")] == ["0000001.pt"]


def test_run_dir_with_checkpoints_is_resumed_with_auto_and_refused_without(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tmp_path / "runs", train={"steps": 1})))
    run = tmp_path / "fixed"
    assert main(["train", str(config), "--run-dir", str(run), "--resume", "auto"]) == 0
    assert main(["train", str(config), "--run-dir", str(run)]) == 2
    assert "already has checkpoints: continue it with --resume auto" in capsys.readouterr().err
    assert main(["train", str(config), "--run-dir", str(run), "--resume", "latest"]) == 2
    assert not (tmp_path / "runs").exists()


def test_a_stop_signal_during_a_checkpoint_write_lets_the_write_complete(tmp_path, monkeypatch):
    real_save = torch.save

    def save_with_signal(state, path):
        os.kill(os.getpid(), signal.SIGTERM)
        real_save(state, path)

    monkeypatch.setattr(checkpoint_module.torch, "save", save_with_signal)
    with StopSignals() as signals:
        path = save_checkpoint({"step": 3}, tmp_path, 3, keep=2)
    assert signals.received == "SIGTERM"
    assert torch.load(path, weights_only=True) == {"step": 3} and sorted(os.listdir(tmp_path)) == ["0000003.pt"]


def test_stop_signals_stay_recorded_after_an_error_that_ends_the_process():
    """torchrun sends SIGTERM to the survivors as soon as a worker dies: after the lost-peer error the
    signal must stay recorded until the error is reported; after any other error the handlers return."""

    class LaunchLost(RuntimeError):
        pass

    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(LaunchLost):
            with StopSignals(ending=(LaunchLost,)) as signals:
                raise LaunchLost("process 1 of 2 was lost")
        os.kill(os.getpid(), signal.SIGTERM)  # the launcher's SIGTERM: recorded, the process lives on
        assert signals.received == "SIGTERM"
    finally:
        signal.signal(signal.SIGTERM, previous)
    with pytest.raises(ValueError):
        with StopSignals(ending=(LaunchLost,)):
            raise ValueError("a setting")
    assert signal.getsignal(signal.SIGTERM) == previous
