"""Every reported number is made by the settings it is reported under: an edited study never
reports an old run or evaluation, an evaluation at step N uses checkpoint N, a failed evaluation
leaves no mixed folder, overrides apply to the run's own config, result files are written whole,
and two commands never write into one folder. Through the real command line (in-process)."""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from ccua.cli import main
from ccua.config import DataConfig
from ccua.files import atomic_file, folder_lock
from ccua.metrics import train_classifier
from ccua.report import write_metrics
from ccua.runs import RunFolder
from tests.conftest import tiny_config_dict

#: a finished two-variant study: 4 steps with checkpoints 2 and 4 kept, fixed and tuned guidance
STUDY = {
    "steps": 4, "seeds": [0], "baseline": "plain",
    "overrides": ["train.ckpt_every=2", "train.keep_checkpoints=0"],
    "variants": {"plain": ["method.names=[plain]"], "ccua": ["method.names=[ccua]"]},
    "evaluation": {"features": "random", "per_class": 2, "sampler_steps": 2, "tail_seeds": 0, "max_reference": 100,
                   "guidance": 1.0, "guidance_grid": [0, 1], "proxy_per_class": 1, "references": ["train"]},
}


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("ccua: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _write_study(folder: Path, study: dict) -> Path:
    preset = folder / "tiny.yaml"
    preset.write_text(yaml.safe_dump(tiny_config_dict(folder / "unused")))
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump({"preset": str(preset), **study}))
    return path


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory) -> Path:
    """The output folder of :data:`STUDY`, run once."""
    folder = tmp_path_factory.mktemp("study")
    out = folder / "out"
    assert main(["compare", str(_write_study(folder, STUDY)), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory) -> list[Path]:
    """Two classifier weight files of the tiny data set (other seeds: other weights)."""
    folder = tmp_path_factory.mktemp("classifiers")
    data = DataConfig(name="fashion_mnist", resolution=8, imbalance=None)
    paths = [folder / f"classifier{seed}.pt" for seed in (0, 1)]
    for seed, path in zip((0, 1), paths):
        train_classifier(data, path, epochs=1, batch_size=32, seed=seed, max_train=64, progress=False)
    return paths


def _reported(out: Path, report: str = "report") -> list[tuple[dict, dict]]:
    """(CSV row, the metrics.json it names) of each run in a report."""
    rows = list(csv.DictReader((out / report / "comparison.csv").open()))
    assert rows
    return [(row, json.loads(Path(row["source"]).read_text())) for row in rows]


def _rerun(finished: Path, tmp_path: Path, study: dict) -> tuple[int, Path]:
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    return main(["compare", str(_write_study(tmp_path, study)), "--out", str(out)]), out


def _edited(change) -> dict:
    study = copy.deepcopy(STUDY)
    change(study)
    return study


# --------------------------------------------------------------------------- an edited study

@pytest.mark.parametrize("change, named", [
    (lambda s: s["variants"]["ccua"].append("method.ccua.alpha=5.0"), "method.ccua.alpha"),
    (lambda s: s["overrides"].append("train.lr=0.01"), "train.lr"),
], ids=["variant overrides", "shared overrides"])
def test_a_run_trained_with_other_settings_is_refused_not_reported(finished_study, tmp_path, capsys, change, named):
    status, out = _rerun(finished_study, tmp_path, _edited(change))
    assert status == 2
    line = _one_error_line(capsys)
    assert named in line and "trained with other settings" in line
    assert not list((out / "runs" / "ccua-s0" / "checkpoints").glob("0000006.pt"))  # nothing trained


EVALUATION_EDITS = {
    "per_class": (3, lambda record: record["samples"]["per_class"]),
    "sampler_steps": (3, lambda record: record["samples"]["sample"]["steps"]),
    "guidance": (0.5, lambda record: record["samples"]["sample"]["guidance"]),
    "max_reference": (50, lambda record: record["scoring"]["max_reference"]),
    "references": (["test"], lambda record: [record["scoring"]["reference"]]),
}


@pytest.mark.parametrize("key", list(EVALUATION_EDITS))
def test_every_evaluation_setting_edited_is_evaluated_anew(finished_study, tmp_path, key):
    value, read = EVALUATION_EDITS[key]
    study = _edited(lambda s: s["evaluation"].__setitem__(key, value))
    status, out = _rerun(finished_study, tmp_path, study)
    assert status == 0
    reported = _reported(out)
    for row, metrics in reported:
        assert read(metrics["record"]) == value
        assert float(row["fid"]) == pytest.approx(metrics["overall"]["fid"])
    old = {row["source"] for row, _ in _reported(finished_study)}
    assert not old & {str(Path(row["source"]).relative_to(out)) for row, _ in reported}


def test_the_proxy_size_and_grid_edited_retune_from_new_evaluations(finished_study, tmp_path):
    study = _edited(lambda s: s["evaluation"].update(proxy_per_class=2, guidance_grid=[0.5, 1]))
    status, out = _rerun(finished_study, tmp_path, study)
    assert status == 0
    guidance = json.loads((out / "guidance.json").read_text())
    for variant in ("plain", "ccua"):
        assert guidance[variant]["grid"] == [0.5, 1] and set(guidance[variant]["proxy_fid"]) == {"0.5", "1"}
        proxies = [json.loads(p.read_text()) for p in (out / "runs" / f"{variant}-s0" / "eval_guidance").glob(
            "*/metrics.json")]
        new = {f"{m['record']['samples']['sample']['guidance']:g}": m["overall"]["fid"] for m in proxies
               if m["record"]["samples"]["per_class"] == 2}
        assert new == pytest.approx(guidance[variant]["proxy_fid"])
    for row, metrics in _reported(out, "report/tuned_train"):
        assert metrics["record"]["samples"]["sample"]["guidance"] == guidance[row["name"]]["tuned"]
    for row, metrics in _reported(out, "report/tuned_tail_train"):  # the w whose tail proxy FID is lowest
        tail = guidance[row["name"]]["proxy_fid_tail"]
        assert metrics["record"]["samples"]["sample"]["guidance"] == guidance[row["name"]]["tuned_tail"]
        assert tail[f"{guidance[row['name']]['tuned_tail']:g}"] == min(tail.values())


def test_a_call_narrowed_to_later_seeds_uses_the_w_tuned_on_the_studys_first_seed(finished_study, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(finished_study, out)
    before = json.loads((out / "guidance.json").read_text())
    study = _write_study(tmp_path, _edited(lambda s: s.update(seeds=[0, 1])))
    assert main(["compare", str(study), "--out", str(out), "--only", "plain", "--seeds", "1"]) == 0
    guidance = json.loads((out / "guidance.json").read_text())
    assert guidance["plain"]["tuned_on"] == "plain-s0"
    assert guidance["plain"]["proxy_fid"] == pytest.approx(before["plain"]["proxy_fid"])
    assert guidance["ccua"] == before["ccua"]  # a variant this call did not run keeps its entry
    assert not (out / "runs" / "plain-s1" / "eval_guidance").exists()  # no proxy of seed 1 was drawn
    for report, mode in (("report/tuned_train", "tuned"), ("report/tuned_tail_train", "tuned_tail")):
        [(row, metrics)] = _reported(out, report)
        assert (row["name"], metrics["record"]["samples"]["seed"]) == ("plain", 1)
        assert metrics["record"]["samples"]["sample"]["guidance"] == guidance["plain"][mode]

    # a study whose first seed is untrained: a call narrowed to another seed is refused up front
    untrained_first = _write_study(tmp_path, _edited(lambda s: s.update(seeds=[2, 0])))
    assert main(["compare", str(untrained_first), "--out", str(out), "--only", "plain", "--seeds", "0"]) == 2
    assert "tuned on plain-s2" in _one_error_line(capsys)
    assert not (out / "runs" / "plain-s2").exists()


def test_the_feature_network_and_its_weights_edited_are_evaluated_anew(finished_study, tmp_path, classifiers):
    first = _edited(lambda s: s["evaluation"].update(features="classifier", feature_path=str(classifiers[0])))
    status, out = _rerun(finished_study, tmp_path, first)
    assert status == 0
    hashes = {metrics["record"]["scoring"]["weights_hash"] for _, metrics in _reported(out)}
    second = _edited(lambda s: s["evaluation"].update(features="classifier", feature_path=str(classifiers[1])))
    assert main(["compare", str(_write_study(tmp_path, second)), "--out", str(out)]) == 0
    expected = hashlib.sha256(classifiers[1].read_bytes()).hexdigest()
    for _, metrics in _reported(out):
        assert metrics["record"]["scoring"]["features"] == "classifier"
        assert metrics["record"]["scoring"]["weights_hash"] == expected and expected not in hashes


def test_a_lower_budget_evaluates_that_checkpoint_or_refuses(finished_study, tmp_path, capsys):
    status, out = _rerun(finished_study, tmp_path, _edited(lambda s: s.update(steps=2)))
    assert status == 0
    for _, metrics in _reported(out):
        assert metrics["record"]["samples"]["step"] == 2
        assert metrics["record"]["samples"]["checkpoint"] == "checkpoints/0000002.pt"
    assert main(["compare", str(_write_study(tmp_path, _edited(lambda s: s.update(steps=3)))), "--out",
                 str(out)]) == 2
    assert "no checkpoint of step 3 (kept: 2, 4)" in _one_error_line(capsys)


def test_a_higher_budget_resumes_and_reports_the_new_step(finished_study, tmp_path):
    status, out = _rerun(finished_study, tmp_path, _edited(lambda s: s.update(steps=6)))
    assert status == 0
    assert RunFolder(out / "runs" / "ccua-s0").trained_step() == 6
    assert {metrics["record"]["samples"]["step"] for _, metrics in _reported(out)} == {6}


def test_a_narrower_comparison_leaves_no_table_of_the_wider_one(finished_study, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished_study, out)
    report = out / "report"
    assert (report / "differences.csv").exists() and (report / "tuned_train" / "comparison.md").exists()
    # one variant, no guidance grid: no difference to the baseline, no tuned-guidance reports
    study = _edited(lambda s: s["evaluation"].update(guidance_grid=None))
    assert main(["compare", str(_write_study(tmp_path, study)), "--out", str(out), "--only", "plain"]) == 0
    assert [row["name"] for row, _ in _reported(out)] == ["plain"]
    assert not (report / "differences.csv").exists()
    assert sorted(p.name for p in report.iterdir() if p.is_dir()) == []


# --------------------------------------------------------------------------- ccua evaluate and sample

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(folder / "runs", train={"steps": 2})))
    assert main(["train", str(config)]) == 0
    return folder / "runs" / "000-tiny"


def _evaluate(run: Path, *extra: str) -> int:
    return main(["evaluate", str(run), "--features", "random", "--per-class", "2", "--sampler-steps", "2",
                 "--max-reference", "60", *extra])


def test_a_failed_re_evaluation_leaves_the_old_one_whole(trained_run, tmp_path, capsys):
    out = tmp_path / "x"
    assert _evaluate(trained_run, "--out", str(out)) == 0
    before = {p.name: p.read_bytes() for p in [out / "metrics.json", out / "samples" / "images.npz"]}
    status = _evaluate(trained_run, "--out", str(out), "--guidance", "2", "--features", "classifier",
                       "--feature-path", str(tmp_path / "missing.pt"))
    assert status == 2
    line = _one_error_line(capsys)
    assert "missing.pt" in line and "ccua features train" in line
    after = {p.name: p.read_bytes() for p in [out / "metrics.json", out / "samples" / "images.npz"]}
    assert after == before  # checked before sampling: nothing was replaced


def test_a_re_evaluation_with_other_settings_into_one_folder_never_mixes(trained_run, tmp_path):
    out = tmp_path / "x"
    assert _evaluate(trained_run, "--out", str(out)) == 0
    assert _evaluate(trained_run, "--out", str(out), "--guidance", "2") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    info = json.loads((out / "samples" / "sample_info.json").read_text())
    assert metrics["record"]["samples"]["sample"]["guidance"] == 2 == info["sample_guidance"]
    assert metrics["record"]["samples"] == {"kind": "checkpoint", **info["request"]}


def test_evaluate_overrides_change_the_runs_own_data_set(trained_run, capsys):
    assert _evaluate(trained_run, "data.longtail_seed=1") == 0
    found = [json.loads(p.read_text()) for p in (trained_run / "eval").glob("*/metrics.json")]
    data = [m["record"]["scoring"]["data"] for m in found if m["record"]["scoring"]["data"]["longtail_seed"] == 1]
    assert data and data[0]["resolution"] == 8 and data[0]["n_max"] == 40  # the run's, not the default config's
    assert _evaluate(trained_run, "model.unet.ch=4") == 2
    assert "takes data.* and sample.* overrides" in _one_error_line(capsys)


def test_sample_takes_sample_overrides_and_the_old_steps_spelling(trained_run, tmp_path, capsys, caplog):
    out = tmp_path / "s"
    assert main(["sample", str(trained_run), "sample.clip_x0=true", "sample.ddpm.variance=posterior", "--out", str(out),
                 "--per-class", "1", "--steps", "2", "--no-png"]) == 0
    info = json.loads((out / "sample_info.json").read_text())
    assert info["sample_clip_x0"] is True and info["sample_ddim"] == {"eta": 0.0} and info["sample_steps"] == 2
    assert "sample_ddpm" not in info  # the ancestral sampler's own settings change nothing of DDIM's images
    assert "--steps is now spelled --sampler-steps" in caplog.text
    assert main(["sample", str(trained_run), "train.lr=1", "--out", str(tmp_path / "t")]) == 2
    assert "takes sample.* overrides" in _one_error_line(capsys)


# --------------------------------------------------------------------------- whole files, one writer

def test_a_result_file_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    target.write_text('{"old": true}')
    with pytest.raises(OSError):
        with atomic_file(target, "w") as stream:
            stream.write('{"new": ')
            raise OSError(28, "No space left on device")
    assert target.read_text() == '{"old": true}' and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    result = {"feature_net": {"name": "random", "weights_hash": "0", "config": "", "bf16": False},
              "reference": {"key": "r", "n": 1}, "generated": {"n": 1}, "group_mode": "thirds", "overall": {},
              "groups": {}, "per_class": [], "skipped": [], "notes": {}, "warnings": []}

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("ccua.report.metrics_files.format_table", full_disk)  # fails while writing metrics.md
    with pytest.raises(OSError):
        write_metrics(result, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no partial metrics.md, no temporary


def test_a_truncated_feature_cache_is_named_removed_and_rebuilt(trained_run, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    assert _evaluate(trained_run, "--out", str(tmp_path / "a")) == 0
    caches = list((tmp_path / ".cache" / "ccua" / "features").glob("*.npz"))
    assert len(caches) == 1
    caches[0].write_bytes(caches[0].read_bytes()[:100])  # a crash of another tool, a full disk
    first = json.loads((tmp_path / "a" / "metrics.json").read_text())["overall"]["fid"]
    assert _evaluate(trained_run, "--out", str(tmp_path / "b")) == 0
    warning = next(r.getMessage() for r in caplog.records if "reference cache" in r.getMessage())
    assert caches[0].name in warning and "cannot be read" in warning and "removing it" in warning
    with np.load(caches[0]) as rebuilt:
        assert "features" in rebuilt.files
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["overall"]["fid"] == pytest.approx(first)


def test_two_commands_never_write_into_one_folder(finished_study, trained_run, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(finished_study, out)
    study = _write_study(tmp_path, STUDY)
    with folder_lock(out, "ccua compare (another)"):
        assert main(["compare", str(study), "--out", str(out)]) == 2
        assert "is in use by ccua compare (another)" in _one_error_line(capsys)
    run = tmp_path / "runs" / "000-tiny"
    shutil.copytree(trained_run, run)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tmp_path / "runs", train={"steps": 4})))
    with RunFolder(run).lock("a training of tiny"):
        assert main(["train", str(config), "--resume", "latest"]) == 2
        assert "is in use by a training of tiny" in _one_error_line(capsys)
    assert main(["train", str(config), "--resume", "latest"]) == 0  # free again once the other has ended
