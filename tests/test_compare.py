"""`ccua compare` and `ccua evaluate` end to end on tiny runs (random feature network)."""

import csv
import json
import os
from pathlib import Path

import pytest
import yaml

from ccua.checkpoint import load_checkpoint
from ccua.cli import main
from ccua.compare import RunStatus, training_time_left
from ccua.files import folder_lock
from ccua.runs import RunFolder, read_loss_log
from tests.conftest import tiny_config_dict


def metrics_file(run_dir: Path, step: int, guidance: float = 1.0, reference: str = "train") -> Path:
    """The one metrics.json of a run's evaluation at ``step`` and ``guidance`` against ``reference``."""
    found = list((run_dir / "eval").glob(f"step{step:07d}_*_w{guidance:g}_n*_{reference}-*/metrics.json"))
    assert len(found) == 1, f"{len(found)} evaluations of step {step}, w {guidance}, {reference} in {run_dir}"
    return found[0]


def assert_status(capsys, args, expected: dict[str, tuple[str, str, str]]) -> str:
    """``ccua compare --status`` prints, per run, its trained steps, state, stored evaluations and
    logged step time (every run here has logged one); returns the line below the table."""
    capsys.readouterr()
    assert main(args + ["--status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.strip("|").split("|") for line in lines if line.startswith("| ")]
    cells = {row[0].strip(): [c.strip() for c in row[1:]] for row in rows[1:]}
    assert {name: tuple(values[:3]) for name, values in cells.items()} == expected
    assert all(float(values[3]) > 0 for values in cells.values())
    return lines[-1]


def tiny_compare_args(tmp_path: Path, methods: str, tail_seeds: int) -> tuple[list[str], Path]:
    """``ccua compare`` of ``methods`` (seed 0) on the tiny config for 2 steps, scored with random
    features on a few samples; returns the arguments and the output folder."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tmp_path / "unused")))
    out = tmp_path / "cmp"
    args = ["compare", str(config), "--methods", methods, "--seeds", "0", "--steps", "2", "--out", str(out),
            "--features", "random", "--per-class", "3", "--sampler-steps", "2", "--tail-seeds", str(tail_seeds),
            "--max-reference", "200"]
    return args, out


def test_compare_two_methods_writes_the_report_and_skips_finished_runs(tmp_path, capsys):
    args, out = tiny_compare_args(tmp_path, "plain,ccua", tail_seeds=2)
    assert main(args) == 0
    report = out / "report"
    rows = list(csv.DictReader((report / "comparison.csv").open()))
    assert [r["name"] for r in rows] == ["plain", "ccua"]
    assert all(float(r["fid"]) > 0 for r in rows)
    assert (report / "comparison.md").exists() and (report / "per_class.png").exists()
    assert (report / "tail_grid.png").exists()
    metrics = json.loads(metrics_file(out / "runs" / "ccua-s0", 2).read_text())
    assert metrics["provenance"]["step"] == 2 and metrics["record"]["samples"]["sample"]["guidance"] == 1.0
    assert metrics["provenance"]["feature_net"] == "random"
    # a second call trains nothing: the finished runs are skipped
    stamp = (out / "runs" / "plain-s0" / "checkpoints" / "0000002.pt").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "runs" / "plain-s0" / "checkpoints" / "0000002.pt").stat().st_mtime_ns == stamp
    # a larger budget resumes every run and evaluates it anew (the old numbers stay beside)
    longer = list(args)
    longer[longer.index("--steps") + 1] = "3"
    assert_status(capsys, args, {"plain-s0": ("2/2", "trained", "1"), "ccua-s0": ("2/2", "trained", "1")})
    with folder_lock(out / "runs" / "ccua-s0", "a training of ccua-s0"):
        summary = assert_status(capsys, longer, {
            "plain-s0": ("2/3", "to resume", "0"),
            "ccua-s0": ("2/3", f"in use by a training of ccua-s0 (pid {os.getpid()})", "0")})
    assert summary.startswith("0 of 2 runs trained; 2 training steps left, about ") and " h at 1 job " in summary
    assert_status(capsys, args + ["train.lr=0.0005"], {"plain-s0": ("2/2", "trained with other settings: train.lr", "1"),
                                                      "ccua-s0": ("2/2", "trained with other settings: train.lr", "1")})
    assert main(longer) == 0
    assert metrics_file(out / "runs" / "plain-s0", 3).exists()
    assert metrics_file(out / "runs" / "plain-s0", 2).exists()


def test_training_time_left_times_each_run_by_its_own_then_its_variants_then_the_mean_step_time():
    statuses = [RunStatus("plain-s0", "plain", 100, 100, "trained", 0, 0.5),
                RunStatus("plain-s1", "plain", 40, 100, "to resume", 0, 0.7),    # its own time: 60 x 0.7
                RunStatus("plain-s2", "plain", 0, 100, "not started", 0),         # plain's mean: 100 x 0.6
                RunStatus("ccua-s0", "ccua", 10, 100, "to resume", 0, 1.1),      # 90 x 1.1
                RunStatus("cbdm-s0", "cbdm", 0, 100, "not started", 0)]           # the mean of all: 100 x 0.7667
    expected = 60 * 0.7 + 100 * 0.6 + 90 * 1.1 + 100 * (0.5 + 0.7 + 1.1) / 3
    assert training_time_left(statuses, jobs=2) == pytest.approx(expected / 2)
    assert training_time_left(statuses[2:3] + statuses[4:], jobs=1) is None  # nothing timed yet


def test_the_loss_log_of_a_run_still_training_reads_one_row_per_step_and_times_its_steps(tmp_path):
    rows = [{"step": 10, "total": 1.0, "steps_per_sec": 2.0}, {"step": 20, "total": 0.9, "steps_per_sec": 4.0},
            {"step": 20, "total": 0.8, "steps_per_sec": 5.0},   # logged again after a resume: this one wins
            {"step": 30, "total": 0.7, "steps_per_sec": 1.0}]
    log = tmp_path / "losses.jsonl"
    log.write_text("".join(json.dumps(row) + "\n" for row in rows) + "\n" + '{"step": 40, "tot')  # cut short
    assert read_loss_log(log) == [rows[0], rows[2], rows[3]]
    assert RunFolder(tmp_path).seconds_per_step() == pytest.approx(0.5)        # median of 0.5, 0.2, 1.0
    assert RunFolder(tmp_path).seconds_per_step(last=2) == pytest.approx(0.6)  # of 0.2 and 1.0
    assert read_loss_log(tmp_path / "missing.jsonl") == [] and RunFolder(tmp_path / "x").seconds_per_step() is None


def test_evaluate_a_sample_folder(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tmp_path / "runs", train={"steps": 1})))
    main(["train", str(config)])
    run = tmp_path / "runs" / "000-tiny"
    main(["sample", str(run), "--out", str(tmp_path / "s"), "--per-class", "3", "--steps", "2", "--no-png"])
    assert main(["evaluate", str(tmp_path / "s"), "--features", "random", "--max-reference", "100"]) == 0
    printed = capsys.readouterr().out
    assert "head" in printed and "tail" in printed
    metrics = json.loads(next((tmp_path / "s" / "eval").glob("samples_train-*/metrics.json")).read_text())
    assert metrics["provenance"]["sample"]["sampler"] == "ddim" and metrics["provenance"]["sample"]["steps"] == 2
    assert metrics["groups"]["tail"]["n_gen"] == 9


def test_a_study_file_runs_variants_side_by_side_with_paired_differences(tmp_path, capsys):
    """Variants with their own overrides and seeds, two jobs at once, two references, the paired
    difference table and the near-copy share in every evaluation."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tmp_path / "unused")))
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({
        "preset": str(config), "steps": 2, "seeds": [0, 1], "baseline": "plain", "jobs": 2,
        "variants": {"plain": ["method.names=[plain]"],
                     "cheap": ["method.names=[ccua]", "method.ccua.uncond_fraction=0.25",
                               "method.ccua.ucl_fraction=0.5"],
                     "strong": {"overrides": ["method.names=[ccua]", "method.ccua.alpha=10"], "seeds": [0]}},
        "evaluation": {"features": "random", "per_class": 3, "sampler_steps": 2, "tail_seeds": 1,
                       "max_reference": 200, "guidance": 1.0, "references": ["train", "test"]},
    }))
    out = tmp_path / "study_out"
    # the baseline alone first (--only), then the whole study, which skips the baseline's finished work
    assert main(["compare", str(study), "--out", str(out), "--only", "plain"]) == 0
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["plain-s0", "plain-s1"]
    stamp = metrics_file(out / "runs" / "plain-s0", 2).stat().st_mtime_ns
    assert main(["compare", str(study), "--out", str(out)]) == 0
    assert metrics_file(out / "runs" / "plain-s0", 2).stat().st_mtime_ns == stamp
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == ["cheap-s0", "cheap-s1", "plain-s0", "plain-s1", "strong-s0"]
    trained = yaml.safe_load((out / "runs" / "cheap-s1" / "config.yaml").read_text())
    assert trained["method"]["ccua"]["uncond_fraction"] == 0.25 and trained["train"]["seed"] == 1
    test_ref = json.loads(metrics_file(out / "runs" / "plain-s0", 2, reference="test").read_text())
    assert test_ref["provenance"]["reference_split"] == "test"
    assert test_ref["memorisation"]["overall"]["n"] == 30  # 3 images x 10 classes, each checked
    assert (out / "report" / "fixed_test" / "comparison.md").exists()
    differences = list(csv.DictReader((out / "report" / "differences.csv").open()))
    fid_rows = {r["name"]: r for r in differences if r["metric"] == "fid"}
    assert fid_rows["cheap"]["n_seeds"] == "2" and fid_rows["strong"]["n_seeds"] == "1"
    assert fid_rows["strong"]["low"] == ""  # one seed: no interval
    assert "Difference to plain" in (out / "report" / "comparison.md").read_text()


def test_gpus_per_run_launches_each_run_under_torchrun_on_its_own_gpus(tmp_path):
    from ccua.compare import CompareSettings, _training_job, planned_runs, train_under_torchrun
    from ccua.launch import child_environment, gpu_group, torchrun_command

    assert torchrun_command("py", 4, ["train", "c.yaml"]) == ["py", "-m", "torch.distributed.run", "--standalone",
                                                              "--nproc_per_node", "4", "-m", "ccua.cli", "train",
                                                              "c.yaml"]
    assert [gpu_group(slot, 2) for slot in range(3)] == [[0, 1], [2, 3], [4, 5]]
    parent = {"CUDA_VISIBLE_DEVICES": "4,5,6,7", "RANK": "0", "WORLD_SIZE": "8", "MASTER_PORT": "1", "PATH": "/bin"}
    child = child_environment(parent, [2, 3], threads=3)
    assert child == {"CUDA_VISIBLE_DEVICES": "6,7", "OMP_NUM_THREADS": "3", "PATH": "/bin"}
    assert child_environment({}, [0, 1], 1)["CUDA_VISIBLE_DEVICES"] == "0,1"

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tmp_path / "unused")))
    settings = CompareSettings(preset=str(config), methods=["ccua"], steps=2, out_dir=tmp_path / "cmp",
                               gpus_per_run=2, device="cpu")
    job = _training_job(settings, planned_runs(settings)[0])
    assert job.function is train_under_torchrun and job.args[2:] == (2, "cpu")
    assert job.args[0].train.progress is False

    run_dir = train_under_torchrun(*job.args)  # two gloo processes, as on two GPUs
    assert run_dir == tmp_path / "cmp" / "runs" / "ccua-s0"
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "0000002.pt")
    assert checkpoint["step"] == 2 and len(checkpoint["rng"]) == 2  # one run trained by both processes
    assert (run_dir / "config.yaml").exists() and "run folder:" in (run_dir / "launch.log").read_text()


def test_only_keeps_named_variants_of_a_study_file_and_refuses_unknown_ones(tmp_path, capsys):
    import pytest

    from ccua.compare import load_study
    from ccua.config import ConfigError

    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"preset": "cifar10_lt", "variants": {
        "plain": ["method.names=[plain]"], "ccua": ["method.names=[ccua]"], "cbdm": ["method.names=[cbdm]"]}},
        sort_keys=False))
    assert [v.name for v in load_study(study, only=["cbdm", "plain"]).variants] == ["plain", "cbdm"]
    with pytest.raises(ConfigError, match=r"no variant\(s\) \['oclt'\]"):
        load_study(study, only=["plain", "oclt"])
    assert main(["compare", "cifar10_lt", "--only", "plain"]) == 2
    assert "--only picks variants of a study file" in capsys.readouterr().err


@pytest.mark.parametrize("study", sorted(Path(__file__).parents[1].glob("studies/*.yaml")), ids=lambda p: p.stem)
def test_the_shipped_study_files_plan_runs_with_the_settings_they_name(study):
    """A misspelt override or preset in a shipped study would only fail hours into the study."""
    from ccua.compare import load_study, planned_runs

    runs = planned_runs(load_study(study))
    assert runs and len({run.name for run in runs}) == len(runs)
    for run in runs:
        ccua = run.config.method.ccua
        if "x10" in run.variant:
            assert (ccua.alpha, ccua.gamma) == (10, 10)
        if "tau0.5" in run.variant:
            assert ccua.temperature == 0.5
        if run.variant in {"plain", "ccua"}:
            assert (ccua.alpha, ccua.gamma, ccua.temperature) == (1, 1, 0.1)


def test_shipped_studies_are_found_by_name():
    from ccua.compare import find_study, load_study, study_names

    assert {"fashion_mnist_lt", "fashion_mnist_lt_memorising", "fashion_mnist_lt_sweep"} <= set(study_names())
    assert find_study("fashion_mnist_lt") == "fashion_mnist_lt"  # the preset of that name wins
    study = find_study("fashion_mnist_lt_study")
    assert Path(study).is_file() and Path(study).name == "fashion_mnist_lt.yaml"
    assert load_study(find_study("fashion_mnist_lt_memorising")).preset == "fashion_mnist_lt"
    assert find_study("studies/fashion_mnist_lt.yaml") == "studies/fashion_mnist_lt.yaml"


@pytest.mark.parametrize("text, message", [
    ("variantz: {}", r"unknown config key 'variantz' \(valid keys: preset, variants,"),
    ("evaluation: {per_clas: 3}", r"unknown config key 'per_clas' in 'evaluation'"),
    ("jobs: 0", r"jobs=0 must be a positive integer"),
    ("evaluation: {per_class: ten}", r"evaluation.per_class must be an integer, got 'ten'"),
    ("steps: -5", r"steps=-5 must be an integer >= 0"),
    ("variants: [plain]", r"variants must be a mapping"),
])
def test_a_study_file_is_read_with_the_configs_parser_and_checks(tmp_path, text, message):
    """Study files get the config's YAML (1e-3 is a number), unknown keys with the valid ones,
    types and ranges."""
    from ccua.compare import load_study
    from ccua.config import ConfigError

    study = tmp_path / "study.yaml"
    study.write_text("preset: fashion_mnist_lt\nvariants: {plain: ['method.names=[plain]']}\n" + text + "\n")
    with pytest.raises(ConfigError, match=message):
        load_study(study)
    study.write_text("preset: fashion_mnist_lt\nvariants: {plain: ['method.names=[plain]']}\n"
                     "evaluation: {guidance: 1e0, guidance_grid: [0, 1e0]}\n")
    assert (load_study(study).guidance, load_study(study).guidance_grid) == (1.0, [0.0, 1.0])


def test_a_stop_signal_while_the_reports_are_written_exits_75_and_the_same_command_finishes(tmp_path, monkeypatch):
    """Slurm's signal may come after the last job: the comparison still exits 75 (a requeue), not
    143, and the requeued command reuses every run and evaluation to write the report."""
    import signal

    import ccua.compare as compare_module

    args, out = tiny_compare_args(tmp_path, "plain", tail_seeds=0)
    real = compare_module._write_reports

    def signal_then_write(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    def unhandled(signum, frame):  # in place of the default, which would end the test run itself
        raise AssertionError("the comparison left SIGTERM to its default handler")

    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(compare_module, "_write_reports", signal_then_write)
            with pytest.raises(SystemExit) as stopped:
                main(args)
        assert signal.getsignal(signal.SIGTERM) is unhandled  # the handlers are given back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert stopped.value.code == 75 and "during ccua compare" in str(stopped.value)
    assert not (out / "report" / "comparison.md").exists()
    evaluation = metrics_file(out / "runs" / "plain-s0", 2).stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "report" / "comparison.md").exists()
    assert metrics_file(out / "runs" / "plain-s0", 2).stat().st_mtime_ns == evaluation  # reused, not redone
