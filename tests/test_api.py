"""The Python API: load a run, sample it, score images, as the README's "From Python" shows."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import ccua
from ccua.cli import main
from ccua.config import DataConfig
from tests.conftest import tiny_config_dict

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("api")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(root / "runs", train={"steps": 2})))
    assert main(["train", str(config)]) == 0
    return root / "runs" / "000-tiny"


def test_a_run_samples_the_images_of_ccua_sample(tiny_run, tmp_path):
    run = ccua.load_run(tiny_run)
    assert run.step == 2 and run.config.name == "tiny" and run.model.null_label == len(run.class_counts)
    images = run.sample([0, 1, 2, 2], sampler="ddim", steps=3, guidance=1.0, seed=4)
    assert images.dtype == np.uint8 and images.shape == (4, 8, 8, 1)
    assert main(["sample", str(tiny_run), "--labels", "0,1,2,2", "--per-class", "1", "--sampler", "ddim",
                 "--sampler-steps", "3", "--guidance", "1", "--seed", "4", "--out", str(tmp_path / "s"),
                 "--no-png"]) == 0
    with np.load(tmp_path / "s" / "images.npz") as written:
        assert np.array_equal(written["arr_0"], images)
    with pytest.raises(ValueError, match="labels must be in"):
        run.sample([99])
    with pytest.raises(ValueError, match=r"sample.ddim.eta=-1.0 must be in \[0, 1\]"):
        run.sample([0], ddim={"eta": -1.0})
    # a sampler's own setting as a mapping, and under its old flat name (moved, with a warning)
    fresh_noise = run.sample([0, 1, 2, 2], sampler="ddim", steps=3, guidance=1.0, seed=4, ddim={"eta": 1.0})
    assert fresh_noise.shape == images.shape and not np.array_equal(fresh_noise, images)
    assert np.array_equal(run.sample([0, 1, 2, 2], sampler="ddim", steps=3, guidance=1.0, seed=4, eta=1.0), fresh_noise)


def test_scores_of_images_in_memory_are_typed(tiny_run):
    run = ccua.load_run(tiny_run)
    labels = np.repeat(np.arange(10), 3)
    images = run.sample(labels, steps=2, seed=0)
    data = DataConfig(name="fashion_mnist", resolution=8, imbalance=0.1, n_max=40)
    scores = ccua.evaluate_samples(images, labels, data=data, features="random", max_reference=100)
    assert isinstance(scores, ccua.Scores) and scores.fid == scores.overall.fid > 0
    assert set(scores.groups) == {"head", "body", "tail"} and scores.groups["tail"].n_generated == 9
    assert scores.per_class[0].n_generated == 3 and set(scores.copies) == {"head", "body", "tail"}
    assert scores.raw["reference"]["n"] == 100


def test_the_readme_example_runs(tiny_run, tmp_path):
    """The README's block, with the tiny run and the test feature network in place of the demo's."""
    block = re.search(r"## From Python\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    code = (block.replace('"runs/demo/000-fashion_mnist_lt_ccua"', repr(str(tiny_run)))
            .replace('data="fashion_mnist_lt"', 'data=ccua.load_run(' + repr(str(tiny_run)) + ').config.data')
            .replace('features="classifier"', 'features="random"')
            .replace('feature_path=".cache/ccua/classifiers/fashion_mnist-16px.pt"', "max_reference=100"))
    assert code != block
    exec(compile(code, "README.md", "exec"), {})


def test_version_and_python_dash_m():
    assert ccua.__version__ != "0+unknown"
    result = subprocess.run([sys.executable, "-m", "ccua", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"ccua {ccua.__version__}"


def test_an_export_is_safetensors_and_json_and_samples_as_the_run(tiny_run, tmp_path):
    from safetensors.torch import load_file
    import json as _json

    assert main(["export", str(tiny_run), "--format", "safetensors", "--out", str(tmp_path / "x")]) == 0
    weights = load_file(tmp_path / "x" / "model.safetensors")  # no ccua needed to read it
    meta = _json.loads((tmp_path / "x" / "config.json").read_text())
    assert meta["step"] == 2 and meta["ema"] is True and meta["config"]["name"] == "tiny"
    run = ccua.load_run(tiny_run)
    assert set(weights) == set(run.model.state_dict())
    exported = ccua.load_run(tmp_path / "x")
    assert exported.step == 2 and exported.class_counts == run.class_counts
    labels = [0, 3, 9]
    assert np.array_equal(exported.sample(labels, steps=2, seed=1), run.sample(labels, steps=2, seed=1))
    assert main(["sample", str(tmp_path / "x"), "--per-class", "1", "--sampler-steps", "2", "--no-png",
                 "--out", str(tmp_path / "s")]) == 0
