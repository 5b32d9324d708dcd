"""Where the numbers go: TensorBoard by default, Weights & Biases only when asked (never required).

W&B itself needs an account and the network, so the W&B test puts a small module named ``wandb``
on the path that records the calls a run makes (init, log, Image, finish) into a file."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap

import pytest

from ccua.config import ConfigError, config_from_dict
from ccua.training import train
from tests.conftest import tiny_config_dict

RECORDER = '''
import json, os

def _write(kind, **values):
    with open(os.environ["WANDB_CALLS"], "a") as stream:
        stream.write(json.dumps({"call": kind, **values}, default=str) + "\\n")

class Image:
    def __init__(self, pixels):
        self.shape = list(pixels.shape)

class _Run:
    def log(self, values, step=None):
        _write("log", step=step, keys=sorted(values),
               images={k: v.shape for k, v in values.items() if isinstance(v, Image)})
    def finish(self):
        _write("finish")

def init(**settings):
    _write("init", **{k: v for k, v in settings.items() if k != "config"}, config_name=settings["config"]["name"])
    return _Run()
'''


def test_wandb_asked_for_but_not_installed_is_one_line(tmp_path):
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    config = config_from_dict(tiny_config_dict(tmp_path, train={"report_to": ["tensorboard", "wandb"]}))
    with pytest.raises(ConfigError, match="wandb, which is not installed: pip install wandb"):
        train(config)
    with pytest.raises(ConfigError, match="unknown reporter 'mlflow'"):
        train(config_from_dict(tiny_config_dict(tmp_path, train={"report_to": ["mlflow"]})))


def test_wandb_gets_the_losses_and_grids_and_a_resume_continues_its_run(tmp_path, monkeypatch):
    site = tmp_path / "site" / "wandb"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text(textwrap.dedent(RECORDER))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    monkeypatch.setenv("WANDB_CALLS", str(tmp_path / "calls.jsonl"))
    settings = tiny_config_dict(tmp_path / "runs", train={"report_to": ["wandb"], "steps": 4, "wandb_project": "lt"})
    run = train(config_from_dict(settings))
    settings["train"]["steps"] = 6
    train(config_from_dict(settings), resume="latest")
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    inits = [c for c in calls if c["call"] == "init"]
    assert len(inits) == 2 and inits[0]["id"] == inits[1]["id"] and inits[0]["resume"] == "allow"
    assert inits[0]["project"] == "lt" and inits[0]["config_name"] == "tiny"
    logged = [c for c in calls if c["call"] == "log"]
    assert [c["step"] for c in logged if "loss/dm" in c["keys"]] == [2, 4, 6]
    assert any(c["images"].get("samples/grid") for c in logged)
    assert [c["call"] for c in calls].count("finish") == 2
    assert not (run / "tensorboard").exists()  # not asked for
