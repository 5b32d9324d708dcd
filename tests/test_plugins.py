"""A new method, sampler, data source or metric is one module and one registry line
(docs/extending.md): a toy regulariser, registered from this test module, trains through the
command line with its own settings section, whose declared values are checked like those of the
shipped methods; a toy sampler samples a trained run through the command line with its own
settings; a toy data source is counted and trained on with its own settings; a toy metric is
scored for every subset and shows up in metrics.md and the comparison tables."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import yaml

from ccua.cli import main
from ccua.config import PLUGIN_SETTINGS, DataConfig, setting
from ccua.data import SOURCES, ArraySource, SourceConfig, register_source
from ccua.diffusion import DDPM, register_sampler
from ccua.methods import METHODS, Method, PassOutputs, StepContext, register_method
from ccua.metrics import RandomFeatureNet, Reference, evaluate
from ccua.metrics.subset_metrics import SUBSET_METRICS, Column, SubsetInputs, SubsetMetric, register_metric
from ccua.report import write_metrics
from ccua.report.metrics_files import format_table
from ccua.report.tables import load_runs, run_row
from tests.conftest import tiny_config_dict


@dataclass
class PullConfig:
    """``method.pull``: how hard, and towards which value, the prediction is pulled."""

    weight: float = setting(0.5, at_least=0)
    towards: str = setting("zero", choices=("zero", "one"))


class Pull(Method):
    """weight * mean (prediction - value)^2: a regulariser small enough to read at a glance."""

    name = "pull"
    settings = PullConfig

    def __init__(self, config: PullConfig | None = None):
        self.config = config if config is not None else PullConfig()

    def loss_terms(self, context: StepContext, outputs: PassOutputs) -> dict[str, torch.Tensor]:
        value = 0.0 if self.config.towards == "zero" else 1.0
        return {"pull": self.config.weight * (outputs.predictions["cond"] - value).pow(2).mean()}


@pytest.fixture
def pull_registered():
    register_method(Pull)  # the registry line a new method adds to methods/__init__.py
    yield
    METHODS.pop("pull")
    PLUGIN_SETTINGS["method"].pop("pull")


@pytest.fixture
def tiny_yaml(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(tmp_path / "runs", train={"steps": 2, "ckpt_every": 0})))
    return path


def test_a_registered_method_trains_from_the_command_line_with_its_own_settings(pull_registered, tiny_yaml,
                                                                                  tmp_path):
    assert main(["train", str(tiny_yaml), "method.names=[pull]", "method.pull.weight=0.25",
                 "method.pull.towards=one"]) == 0
    run = tmp_path / "runs" / "000-tiny"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["method"]["names"] == ["pull"]
    assert saved["method"]["pull"] == {"weight": 0.25, "towards": "one"}
    assert saved["method"]["ccua"]["alpha"] == 1.0  # the shipped methods' sections are recorded as before
    logged = [json.loads(line) for line in (run / "losses.jsonl").read_text().splitlines()]
    assert logged and all(row["pull"] > 0 for row in logged)
    # the stored run loads again with its plug-in section: sampling it works
    out = tmp_path / "samples"
    assert main(["sample", str(run), "--out", str(out), "--per-class", "1", "--sampler-steps", "2"]) == 0
    assert (out / "images.npz").is_file()


@pytest.mark.parametrize("override, message", [
    ("method.pull.weight=-1", "method.pull.weight=-1.0 must be >= 0"),
    ("method.pull.towards=two", "method.pull.towards='two' is not one of: zero, one"),
    ("method.pull.strength=2", "unknown config key 'strength' in 'method.pull' \\(valid keys: weight, towards\\)"),
])
def test_a_registered_methods_declared_values_are_checked(pull_registered, tiny_yaml, capsys, override, message):
    assert main(["train", str(tiny_yaml), "method.names=[pull]", override, "--dry-run"]) != 0
    assert any(line.startswith("ccua: error:") and re.search(message, line)
               for line in capsys.readouterr().err.splitlines())


def test_a_section_no_method_registered_is_refused(tiny_yaml, capsys):
    assert main(["train", str(tiny_yaml), "method.cuaa.alpha=2", "--dry-run"]) != 0
    error = capsys.readouterr().err
    assert "unknown config key 'cuaa' in 'method'" in error and "ccua" in error


# --------------------------------------------------------------------------- a metric

SPREAD = Column("feature_spread", "spread", "spread", "feature spread", digits=3)


class FeatureSpread(SubsetMetric):
    """The generated features' mean distance to their centre over the reference's: a diversity ratio."""

    columns = (SPREAD,)

    def score(self, inputs: SubsetInputs) -> dict:
        def spread(features):
            return float(np.linalg.norm(features - features.mean(0), axis=1).mean())
        return {SPREAD.key: spread(inputs.generated) / spread(inputs.reference)}


@pytest.fixture
def spread_registered():
    metric = register_metric(FeatureSpread())  # the registry line a new metric adds
    yield
    SUBSET_METRICS.remove(metric)


def test_a_registered_metric_is_scored_per_subset_and_shown_in_every_report(spread_registered, tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 16)
    reference = rng.integers(0, 255, (len(labels), 8, 8, 3), dtype=np.uint8)
    generated = (reference // 4 + 96).astype(np.uint8)  # the same images, a quarter of the contrast
    result = evaluate(generated, labels, Reference(reference, labels, key="spread"), [40, 20, 10, 5],
                      RandomFeatureNet(progress=False), kid_subsets=3)
    assert 0 < result["overall"]["feature_spread"] < 1
    assert all(0 < row["feature_spread"] < 1 for row in [*result["groups"].values(), *result["per_class"]])
    assert "| subset | n_gen/n_ref | FID | KID x1e3 | precision | recall | class acc | spread |" in format_table(result)
    for seed in (0, 1):
        write_metrics(result, tmp_path / f"s{seed}", {"step": 1, "seed": seed, "guidance": 1.0})
    runs = load_runs([tmp_path / "s0", tmp_path / "s1"], names=["toy-s0", "toy-s1"])
    row = run_row(runs[0], ["head", "body", "tail"])
    assert row["spread"] == pytest.approx(result["overall"]["feature_spread"])
    assert row["spread_tail"] == pytest.approx(result["groups"]["tail"]["feature_spread"])


# --------------------------------------------------------------------------- a sampler

@dataclass
class JumpConfig:
    """``sample.jump``: how far towards the predicted image the one step goes."""

    shrink: float = setting(1.0, above=0, at_most=1)


def run_jump(objective, predict, noise, sample, progress, generator):
    """One network evaluation: the x0 the model predicts from pure noise, scaled by ``shrink``."""
    t = torch.full((noise.shape[0],), objective.timesteps - 1, dtype=torch.long, device=noise.device)
    alpha_bar = objective.alpha_bar(t).view(-1, 1, 1, 1)
    x0 = (noise - (1 - alpha_bar).sqrt() * predict(noise, t)) / alpha_bar.sqrt()
    return sample.jump.shrink * x0.clamp(-1, 1)


@pytest.fixture
def jump_registered():
    register_sampler(DDPM, "jump", run_jump, JumpConfig)  # the registry line a new sampler adds
    yield
    DDPM.samplers = {name: run for name, run in DDPM.samplers.items() if name != "jump"}
    DDPM.sampler_settings = {name: cls for name, cls in DDPM.sampler_settings.items() if name != "jump"}
    PLUGIN_SETTINGS["sample"].pop("jump")


def test_a_registered_sampler_samples_a_trained_run_with_its_own_settings(jump_registered, tiny_yaml, tmp_path,
                                                                           capsys):
    assert main(["train", str(tiny_yaml), "method.names=[plain]"]) == 0
    run = tmp_path / "runs" / "000-tiny"
    out = tmp_path / "jumped"
    assert main(["sample", str(run), "--sampler", "jump", "sample.jump.shrink=0.5", "--per-class", "2",
                 "--out", str(out)]) == 0
    info = json.loads((out / "sample_info.json").read_text())
    assert info["sample_sampler"] == "jump" and info["sample_jump"] == {"shrink": 0.5}
    images = np.load(out / "images.npz")["arr_0"]
    # shrink 0.5 of images clamped to [-1, 1]: every pixel within [0.25, 0.75] of the uint8 range
    assert images.shape[0] == 20 and 63 <= images.min() and images.max() <= 192
    capsys.readouterr()
    assert main(["sample", str(run), "--sampler", "jump", "sample.jump.shrink=2", "--out", str(tmp_path / "x")]) != 0
    assert "sample.jump.shrink=2.0 must be in (0, 1]" in capsys.readouterr().err


# --------------------------------------------------------------------------- a data source


@dataclass
class StripesConfig(SourceConfig):
    """``data.stripes.*``: how many images of each class the generated source holds."""

    per_class: int = setting(12, at_least=1, meaning="images per class")

    def description(self, data: DataConfig, split: str) -> str:
        return f"stripes, {self.per_class} per class"


def load_stripes(data: DataConfig, split: str) -> ArraySource:
    """Three classes of 8x8 grey images: class c has a bright column every third pixel from c."""
    n = data.stripes.per_class
    images = np.zeros((3 * n, 8, 8, 1), np.uint8)
    for c in range(3):
        images[c * n:(c + 1) * n, :, c::3] = 255
    return ArraySource(images, np.repeat(np.arange(3), n), 3, ["left", "middle", "right"])


@pytest.fixture
def stripes_registered():
    register_source("stripes", load_stripes, StripesConfig)  # the registry line a new source adds
    yield
    SOURCES.pop("stripes")
    PLUGIN_SETTINGS["data"].pop("stripes")


def test_a_registered_data_source_is_counted_and_trained_on_with_its_own_settings(stripes_registered, tmp_path,
                                                                                   capsys):
    data = ["data.name=stripes", "data.stripes.per_class=20", "data.imbalance=0.1", "data.resolution=8"]
    assert main(["data", *data]) == 0
    printed = capsys.readouterr().out
    # n_c = floor(20 * 0.1^(c / 2)): 20, 6 and 2 images
    assert re.search(r"left\s+20\s+head", printed) and re.search(r"right\s+2\s+tail", printed), printed
    config = tiny_config_dict(tmp_path / "runs", data={"name": "stripes", "stripes": {"per_class": 20},
                                                       "resolution": 8, "imbalance": 0.1, "n_max": None})
    path = tmp_path / "stripes.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path), "train.steps=2", "method.names=[plain]"]) == 0
    recorded = yaml.safe_load((tmp_path / "runs" / "000-tiny" / "config.yaml").read_text())
    assert recorded["data"]["stripes"] == {"per_class": 20}
    capsys.readouterr()
    assert main(["data", "data.name=stripes", "data.stripes.per_class=0"]) == 2
    assert "data.stripes.per_class=0 must be a positive integer (images per class)" in capsys.readouterr().err
