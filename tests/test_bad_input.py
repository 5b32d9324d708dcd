"""Bad input through the command line: non-zero exit, exactly one `ccua: error:` line naming the
problem, no traceback, and the run folders that existed before left as they were.

A handful of cases run the real `ccua` in subprocesses (concurrently: each costs seconds of
imports); the rest call `ccua.cli.main` in-process. Faults inside a run (a full disk, a signal
during a save, truncated checkpoints mid-run) are in test_resume_safety.py.
"""

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml

from ccua.cli import main
from tests.conftest import tiny_config_dict


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Files the bad commands point at: a real finished run, broken configs and checkpoints."""
    root = tmp_path_factory.mktemp("bad_input")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(root / "runs", train={"steps": 2, "ckpt_every": 0})))
    assert main(["train", str(config), "--device", "cpu"]) == 0
    good = root / "runs" / "000-tiny" / "checkpoints" / "0000002.pt"
    data = good.read_bytes()
    (root / "truncated.pt").write_bytes(data[: len(data) // 3])
    (root / "empty.pt").write_bytes(b"")
    (root / "text.pt").write_text("these are not the weights you are looking for\n")
    torch.save({"blocks.0.weight": torch.zeros(2)}, root / "state_dict.pt")  # a plain state dict
    torch.save({"step": 3, "when": __import__("datetime").date(2024, 1, 1)}, root / "pickled_object.pt")
    (root / "syntax.yaml").write_text("base: fashion_mnist_lt\ntrain:\n  lr: [0.1\n  steps: 3\n")
    (root / "self.yaml").write_text("base: self.yaml\n")
    (root / "a.yaml").write_text("base: b.yaml\n")
    (root / "b.yaml").write_text("base: a.yaml\n")
    (root / "sub").mkdir()
    (root / "sub" / "base.yaml").write_text(f"base: {config}\ntrain:\n  lr: 1e-4\n  steps: 1e3\n")
    (root / "sub" / "child.yaml").write_text("base: base.yaml\nmodel:\n  unet:\n    ch: 16\n")
    (root / "sub" / "orphan.yaml").write_text("base: missing.yaml\n")
    return root


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _run_in_process(argv: list[str], capsys) -> tuple[int, list[str]]:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse errors exit
        code = exit_.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.startswith("ccua: error:")]


# ------------------------------------------------------------------ through the real command

def test_real_command_line_gives_one_line(workspace):
    w = str(workspace)
    cases = [
        (["train", f"{w}/syntax.yaml"], "syntax.yaml: not valid YAML at line 4"),
        (["train", f"{w}/a.yaml", "--dry-run"], "base: cycle of config files"),
        (["train", "fashion_mnist_lt", "model.unet.ch=[8"], "override 'model.unet.ch=[8': not valid YAML"),
        (["train", f"{w}/tiny.yaml", "train.log_every=0"], "train.log_every=0 must be a positive integer"),
        (["sample", f"{w}/truncated.pt"], "truncated.pt is truncated or corrupt"),
        (["sample", f"{w}/runs/000-tiny", "--per-class", "0"], "argument --per-class: must be a positive integer"),
    ]
    before = _snapshot(workspace / "runs")

    def run(argv):
        return subprocess.run([sys.executable, "-m", "ccua.cli", *argv], capture_output=True, text=True,
                              timeout=120, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(run, [argv for argv, _ in cases]))
    for (argv, expected), result in zip(cases, results):
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (argv, result.stderr)
        assert len(lines) == 1 and lines[0].startswith("ccua: error: ") and expected in lines[0], (argv, lines)
    assert _snapshot(workspace / "runs") == before


# ------------------------------------------------------------------ in-process: numbers and config files

def test_scientific_notation_is_a_number(workspace, capsys):
    assert main(["train", f"{workspace}/tiny.yaml", "train.lr=1e-3", "train.steps=1e3", "--dry-run"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["train"]["lr"] == 0.001 and resolved["train"]["steps"] == 1000
    assert isinstance(resolved["train"]["steps"], int)


def test_base_is_relative_to_the_including_file(workspace, capsys, monkeypatch):
    monkeypatch.chdir(workspace.parent)  # not the folder of the config files
    assert main(["train", f"{workspace}/sub/child.yaml", "--dry-run"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert (resolved["model"]["unet"]["ch"], resolved["train"]["lr"], resolved["train"]["steps"]) == (16, 1e-4, 1000)
    assert resolved["name"] == "tiny"  # from the grand-parent, given as an absolute path


CONFIG_CASES = [
    (["{w}/self.yaml"], "base: cycle of config files: {w}/self.yaml -> {w}/self.yaml"),
    (["{w}/sub/orphan.yaml"], "base: no YAML file {w}/sub/missing.yaml"),
    (["{w}/syntax.yaml"], "syntax.yaml: not valid YAML at line 4, column 8"),  # libyaml and PyYAML word the rest apart
    (["{w}/tiny.yaml", "train.steps=1.5"], "train.steps must be an integer, got 1.5"),
    (["{w}/tiny.yaml", "train.batch_size=0"], "train.batch_size=0 must be a positive integer"),
    (["{w}/tiny.yaml", "train.steps=-1"], "train.steps=-1 must be an integer >= 0"),
    (["{w}/tiny.yaml", "train.log_every=0"], "train.log_every=0 must be a positive integer"),
    (["{w}/tiny.yaml", "sample.batch_size=0"], "sample.batch_size=0 must be a positive integer"),
    (["{w}/tiny.yaml", "model.unet.ch=0"], "model.unet.ch=0 must be a positive integer"),
    (["{w}/tiny.yaml", "model.unet.ch_mult=[1,2,2,2,2]"], "data.resolution=8 must be divisible by 16"),
    (["{w}/tiny.yaml", "sample.steps=2000"], "sample.steps=2000 exceeds diffusion.ddpm.timesteps=1000"),
    (["{w}/tiny.yaml", "train.lr=0"], "train.lr=0.0 must be > 0"),
    (["{w}/tiny.yaml", "=3"], "the key '' must be dotted names"),
    (["{w}/tiny.yaml", "model.arch=dit", "model.dit.encoder_depth=N/3"],
     "model.dit: encoder_depth 'N/3' must be one of"),
    (["{w}/tiny.yaml", "--resume", "latest", "name=nobody"], "no checkpoint of a run named 'nobody'"),
    (["{w}/tiny.yaml", "--resume", "{w}/truncated.pt"], "truncated.pt is truncated or corrupt"),
]


@pytest.mark.parametrize("args, expected", CONFIG_CASES, ids=[" ".join(a).replace("{w}/", "") for a, _ in CONFIG_CASES])
def test_bad_training_input_is_one_line_before_anything_is_written(workspace, capsys, args, expected):
    before = _snapshot(workspace / "runs")
    w = str(workspace)
    code, errors = _run_in_process(["train", *[a.format(w=w) for a in args]], capsys)
    assert code == 2 and len(errors) == 1 and expected.format(w=w) in errors[0], errors
    assert _snapshot(workspace / "runs") == before


# ------------------------------------------------------------------ in-process: options and files

OPTION_CASES = [
    (["sample", "{run}", "--per-class", "-3"], "argument --per-class: must be a positive integer, got -3"),
    (["sample", "{run}", "--batch-size", "0"], "argument --batch-size: must be a positive integer, got 0"),
    (["sample", "{run}", "--steps", "0"], "argument --steps: must be a positive integer, got 0"),
    (["evaluate", "{run}", "--per-class", "0"], "argument --per-class: must be a positive integer"),
    (["compare", "fashion_mnist_lt", "--per-class", "0"], "argument --per-class: must be a positive integer"),
    (["features", "train", "fashion_mnist_lt", "--batch-size", "0"], "argument --batch-size: must be a positive"),
    (["sample", "{run}", "--bogus"], "unrecognized arguments: --bogus"),
    (["sample", "{w}/empty.pt"], "empty.pt is empty"),
    (["sample", "{w}/text.pt"], "text.pt is not a PyTorch checkpoint file"),
    (["sample", "{w}/state_dict.pt"], "state_dict.pt is not a ccua checkpoint: it lacks 'model', 'config'"),
    (["sample", "{w}/pickled_object.pt"], "pickled_object.pt holds Python objects other than tensors"),
    (["evaluate", "{w}/truncated.pt", "--features", "random"], "truncated.pt is truncated or corrupt"),
    (["sample", "{w}/sub"], "no checkpoint in run folder"),
]


@pytest.mark.parametrize("args, expected", OPTION_CASES, ids=[" ".join(a) for a, _ in OPTION_CASES])
def test_bad_options_and_files_are_one_line(workspace, capsys, args, expected):
    before = _snapshot(workspace / "runs")
    run = workspace / "runs" / "000-tiny"
    code, errors = _run_in_process([a.format(w=workspace, run=run) for a in args], capsys)
    assert code == 2 and len(errors) == 1 and expected in errors[0], errors
    assert "weights_only=False" not in errors[0]
    assert _snapshot(workspace / "runs") == before
