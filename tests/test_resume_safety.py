"""Runs lose nothing and mix nothing: exact-name resume, settings that may and may not change on
resume, atomic run folders, failed or interrupted checkpoint writes, unreadable checkpoints, and
the loss log of a killed run."""

import errno
import json
import logging
import os
import shutil
import signal
import threading
from pathlib import Path

import pytest
import torch
import yaml

from ccua.config import ConfigError, config_from_dict
from ccua.training import train
from ccua import checkpoint as checkpoint_module
from ccua.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ccua.runs import claim_run_dir, resume_candidates
from tests.conftest import merge_sections, tiny_config_dict

STEPS = {"steps": 6, "ckpt_every": 3, "log_every": 1}


def _config(out_dir, name="tiny", model=None, **train_settings):
    return config_from_dict(tiny_config_dict(out_dir, name=name, train={**STEPS, **train_settings}, model=model or {}))


#: a run of the time before the U-Net's null class was a setting: it had a learned null row
BEFORE_NULL_SETTING = {"unet": {"null_embedding": "learned"}}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One tiny run of 6 steps (checkpoints at 3 and 6, a loss row per step), trained once."""
    return train(_config(tmp_path_factory.mktemp("finished") / "runs"))


def _copy_run(run: Path, out_dir: Path, name: str | None = None) -> Path:
    target = out_dir / (name or run.name)
    shutil.copytree(run, target)
    return target


def _weights(path: Path) -> dict:
    return load_checkpoint(path)["model"]


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _interrupted(run: Path) -> None:
    """Make ``run`` look killed after step 6 was logged but before its checkpoint was written."""
    (run / "checkpoints" / "0000006.pt").unlink()


# ------------------------------------------------------------------ which run --resume latest takes

def test_resume_latest_takes_the_run_of_exactly_that_name(tmp_path, finished_run):
    out = tmp_path / "runs"
    mine = _copy_run(finished_run, out, "000-ck")
    other = _copy_run(finished_run, out, "001-other-ck")
    _interrupted(mine)
    _interrupted(other)
    before = _snapshot(other)
    train(_config(out, name="ck"), resume="latest")
    assert (mine / "checkpoints" / "0000006.pt").exists()
    assert _snapshot(other) == before  # the other run, whose name merely ends the same, is untouched


def test_resume_latest_finds_cleaned_names_and_the_highest_number(tmp_path):
    out = tmp_path / "runs"
    for folder in ("999-ccua-cbdm", "1000-ccua-cbdm", "1001-ccua-cbdm-s1", "1002-xccua-cbdm"):
        (out / folder / "checkpoints").mkdir(parents=True)
        (out / folder / "checkpoints" / "0000003.pt").write_bytes(b"")
    found, may_fall_back = resume_candidates("latest", out, "ccua+cbdm")
    assert found == [out / "1000-ccua-cbdm" / "checkpoints" / "0000003.pt"] and may_fall_back
    with pytest.raises(FileNotFoundError, match="no checkpoint of a run named 'cbdm'"):
        resume_candidates("latest", out, "cbdm")


# ------------------------------------------------------------------ what may change on resume

@pytest.mark.parametrize("changed, key", [({"train": {"lr": 5e-4}}, "train.lr"),
                                          ({"method": {"names": ["plain"]}}, "method.names"),
                                          ({"train": {"seed": 1}}, "train.seed"),
                                          ({"model": {"unet": {"dropout": 0.0}}}, "model.unet.dropout")])
def test_resume_refuses_settings_that_change_the_training(tmp_path, finished_run, changed, key):
    run = _copy_run(finished_run, tmp_path / "runs")
    _interrupted(run)
    before = _snapshot(run)
    values = merge_sections(tiny_config_dict(tmp_path / "runs", train=STEPS), changed)
    with pytest.raises(ConfigError, match=rf"{key}: checkpoint .* vs config"):
        train(config_from_dict(values), resume="latest")
    assert _snapshot(run) == before  # nothing written: no checkpoint, log row or config


def test_allowed_changes_are_recorded_and_config_yaml_keeps_the_start(tmp_path, finished_run):
    run = _copy_run(finished_run, tmp_path / "runs")
    _interrupted(run)
    config_before = (run / "config.yaml").read_text()
    # more steps (as `ccua compare` does with a larger budget), other cadences, other sampling
    config = _config(tmp_path / "runs", steps=7, log_every=2, ckpt_every=0)
    config.sample.steps = 2
    train(config, resume="latest")
    assert (run / "config.yaml").read_text() == config_before
    assert yaml.safe_load(config_before)["train"]["steps"] == 6
    records = [json.loads(line) for line in (run / "resumes.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["step"] == 3
    assert records[0]["checkpoint"].endswith("0000003.pt")
    assert records[0]["changed"] == {"sample.steps": [3, 2], "train.ckpt_every": [3, 0], "train.log_every": [1, 2],
                                     "train.steps": [6, 7],  # and the folder was copied elsewhere:
                                     "train.out_dir": [str(finished_run.parent), str(tmp_path / "runs")]}
    assert load_checkpoint(run / "checkpoints" / "0000007.pt")["config"]["train"]["steps"] == 7


def test_resume_exactness_does_not_depend_on_sample_grids(tmp_path, finished_run):
    """In-training sample grids draw noise; they must not move the training's generators, or a
    run's weights would depend on train.sample_every (and a resume would not be exact)."""
    with_grids = train(_config(tmp_path / "grids", sample_every=1))
    _assert_same_weights(_weights(with_grids / "checkpoints" / "0000006.pt"),
                         _weights(finished_run / "checkpoints" / "0000006.pt"))


# ------------------------------------------------------------------ run folders

def test_a_folder_taken_between_choosing_and_creating_is_not_shared(tmp_path, monkeypatch):
    out = tmp_path / "runs"
    out.mkdir()
    real_mkdir = Path.mkdir

    def other_launch_wins(self, *args, **kwargs):
        if self.name == "000-x" and not self.exists():
            real_mkdir(self)  # another process creates the folder just before this one does
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", other_launch_wins)
    assert claim_run_dir(out, "x").name == "001-x"


def test_concurrent_launches_get_distinct_folders(tmp_path):
    out, claimed, start = tmp_path / "runs", [], threading.Barrier(4)

    def launch():
        start.wait()
        for _ in range(10):
            claimed.append(claim_run_dir(out, "race"))

    threads = [threading.Thread(target=launch) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(claimed)) == len(claimed) == 40
    assert sorted(p.name for p in out.iterdir()) == [f"{i:03d}-race" for i in range(40)]


def test_two_trainers_set_up_before_either_trains_get_two_folders(tmp_path):
    from ccua.training import Trainer

    first = Trainer(_config(tmp_path / "runs"), device="cpu")
    second = Trainer(_config(tmp_path / "runs"), device="cpu")
    assert (first.run_dir.name, second.run_dir.name) == ("000-tiny", "001-tiny")


# ------------------------------------------------------------------ checkpoint writes that fail

def _write_then(fault):
    """A torch.save that writes part of the file, then fails with ``fault``."""
    def save(state, path):
        Path(path).write_bytes(b"PK\x03\x04 partial")
        fault()
    return save


def _raise(error):
    def fault():
        raise error
    return fault


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   RuntimeError("PytorchStreamWriter failed writing file data/3: file write failed")])
def test_a_failed_write_names_the_file_removes_the_partial_one_and_keeps_the_rest(tmp_path, monkeypatch, error):
    folder = tmp_path / "checkpoints"
    save_checkpoint({"step": 3}, folder, 3, keep=2)
    monkeypatch.setattr(checkpoint_module.torch, "save", _write_then(_raise(error)))
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*0000006\.pt: "
                                              r"(\[Errno 28\] No space left|PytorchStreamWriter failed)"):
        save_checkpoint({"step": 6}, folder, 6, keep=2)
    assert sorted(p.name for p in folder.iterdir()) == ["0000003.pt"]
    assert torch.load(folder / "0000003.pt", weights_only=True) == {"step": 3}


@pytest.mark.parametrize("signum, raised", [(signal.SIGTERM, SystemExit), (signal.SIGINT, KeyboardInterrupt)])
def test_a_signal_during_a_write_leaves_no_partial_file(tmp_path, monkeypatch, signum, raised):
    folder = tmp_path / "checkpoints"
    save_checkpoint({"step": 3}, folder, 3, keep=2)
    handler_before = signal.getsignal(signal.SIGTERM)
    # Python's own SIGINT handler, also where the suite runs with SIGINT ignored (started in the background)
    previous_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
    monkeypatch.setattr(checkpoint_module.torch, "save", _write_then(lambda: os.kill(os.getpid(), signum)))
    try:
        with pytest.raises(raised):
            save_checkpoint({"step": 6}, folder, 6, keep=2)
    finally:
        signal.signal(signal.SIGINT, previous_sigint)
    assert sorted(p.name for p in folder.iterdir()) == ["0000003.pt"]
    assert signal.getsignal(signal.SIGTERM) is handler_before


def test_a_full_disk_during_training_is_one_line_and_loses_nothing(tmp_path, monkeypatch, capsys):
    from ccua.cli import main

    real_save = torch.save

    def full_at_step_6(state, path):
        if state["step"] == 6:
            _write_then(_raise(OSError(errno.ENOSPC, "No space left on device", str(path))))(state, path)
        return real_save(state, path)

    monkeypatch.setattr(checkpoint_module.torch, "save", full_at_step_6)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tmp_path / "runs", train=STEPS)))
    assert main(["train", str(config)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ccua: error:")]
    assert len(errors) == 1 and "0000006.pt" in errors[0] and "No space left on device" in errors[0]
    checkpoints = tmp_path / "runs" / "000-tiny" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["0000003.pt"]
    assert load_checkpoint(checkpoints / "0000003.pt")["step"] == 3


def test_stale_partial_files_are_removed_at_start_and_a_blocked_out_dir_is_named(tmp_path, finished_run):
    run = _copy_run(finished_run, tmp_path / "runs")
    _interrupted(run)
    (run / "checkpoints" / "0000006.pt.tmp").write_bytes(b"PK partial")
    train(_config(tmp_path / "runs"), resume="latest")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["0000003.pt", "0000006.pt"]
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the runs should go")
    with pytest.raises(ConfigError, match=r"cannot write into .*not-a-folder.*train.out_dir"):
        train(_config(blocker))


# ------------------------------------------------------------------ unreadable checkpoints

def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_an_unreadable_newest_checkpoint_gives_way_to_the_previous_one(tmp_path, finished_run, caplog):
    run = _copy_run(finished_run, tmp_path / "runs")
    _truncate(run / "checkpoints" / "0000006.pt")
    with caplog.at_level(logging.WARNING):
        train(_config(tmp_path / "runs"), resume="latest")
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "0000006.pt is truncated or corrupt" in warning and "previous checkpoint" in warning
    assert "0000003.pt" in warning
    assert (run / "checkpoints" / "0000006.pt.unreadable").exists()  # set aside, not deleted
    # resumed from step 3, it reached exactly the weights of the uninterrupted run
    _assert_same_weights(_weights(run / "checkpoints" / "0000006.pt"),
                         _weights(finished_run / "checkpoints" / "0000006.pt"))
    record = json.loads((run / "resumes.jsonl").read_text())
    assert record["step"] == 3 and record["skipped_unreadable"][0].endswith("0000006.pt.unreadable")


def test_a_named_unreadable_checkpoint_is_refused_in_one_line(tmp_path, finished_run):
    run = _copy_run(finished_run, tmp_path / "runs")
    _truncate(run / "checkpoints" / "0000003.pt")
    with pytest.raises(CheckpointError, match=r"0000003\.pt is truncated or corrupt"):
        train(_config(tmp_path / "runs"), resume=str(run / "checkpoints" / "0000003.pt"))


# ------------------------------------------------------------------ the loss log of a killed run

def test_rows_logged_after_the_checkpoint_are_dropped_on_resume(tmp_path, finished_run):
    run = _copy_run(finished_run, tmp_path / "runs")
    _interrupted(run)  # losses.jsonl has steps 1-6, the newest checkpoint is step 3
    train(_config(tmp_path / "runs"), resume="latest")
    steps = [json.loads(line)["step"] for line in (run / "losses.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    original = [json.loads(line) for line in (finished_run / "losses.jsonl").read_text().splitlines()]
    resumed = [json.loads(line) for line in (run / "losses.jsonl").read_text().splitlines()]
    assert [r["total"] for r in resumed] == pytest.approx([r["total"] for r in original], rel=1e-6)


# ------------------------------------------------------------------ checkpoints of the flat model layout

@pytest.fixture(scope="module")
def finished_learned_null_run(tmp_path_factory) -> Path:
    """As ``finished_run``, with the learned null row that runs of the flat layout had."""
    return train(_config(tmp_path_factory.mktemp("finished_learned") / "runs", model=BEFORE_NULL_SETTING))


def _flat_layout(config: dict) -> dict:
    """A config dict as it was written before the U-Net and DiT settings got sections of their own
    (and before the null class was a setting)."""
    model = config["model"]
    unet = {k: v for k, v in model["unet"].items() if k != "null_embedding"}
    flat = {"arch": model["arch"], **unet, "dit_size": model["dit"]["size"],
            **{k: v for k, v in model["dit"].items() if k not in ("size", "init_from")}}
    return {**config, "model": flat}


def test_checkpoints_of_the_flat_model_layout_sample_and_resume_exactly(tmp_path, finished_learned_null_run, caplog):
    from ccua.generate import LoadedModel

    finished_run = finished_learned_null_run
    run = _copy_run(finished_run, tmp_path / "runs")
    _interrupted(run)
    checkpoint = run / "checkpoints" / "0000003.pt"
    state = torch.load(checkpoint, weights_only=True)
    state["config"] = _flat_layout(state["config"])
    assert "ch" in state["config"]["model"] and "unet" not in state["config"]["model"]
    torch.save(state, checkpoint)
    (run / "config.yaml").write_text(yaml.safe_dump(_flat_layout(yaml.safe_load((run / "config.yaml").read_text()))))
    with caplog.at_level("WARNING"):
        loaded = LoadedModel(run)
        assert loaded.step == 3 and loaded.config.model.unet.ch == 8
        assert loaded.config.model.unet.null_embedding == "learned"  # what runs of that layout had
        train(_config(tmp_path / "runs", model=BEFORE_NULL_SETTING), resume="latest")
    assert not [r for r in caplog.records if r.name.startswith("ccua")]  # stored configs are read silently
    _assert_same_weights(_weights(run / "checkpoints" / "0000006.pt"),
                         _weights(finished_run / "checkpoints" / "0000006.pt"))
