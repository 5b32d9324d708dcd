"""Presets, YAML files, overrides and validation."""

import pytest

from ccua.build import load_checked_config
from ccua.config import ConfigError, load_config, parse_overrides, preset_names


def test_presets_resolve():
    names = preset_names()
    for required in ("fashion_mnist_lt", "mnist_lt", "cifar10_lt", "cifar100_lt", "tinyimagenet_lt"):
        assert required in names
    for name in names:
        load_checked_config(name)
    cifar = load_config("cifar10_lt")
    assert (cifar.model.ch, cifar.model.ch_mult, cifar.model.attn_resolutions) == (128, [1, 2, 2, 2], [16])
    assert cifar.method.ccua.alpha == cifar.method.ccua.gamma == 1.0 and cifar.data.hflip
    tiny = load_config("tinyimagenet_lt")
    assert tiny.data.balanced_resampling == 0.1 and tiny.data.name == "image_folder"
    assert load_config("cifar100_lt").data.name == "cifar100"


def test_dotted_overrides():
    config = load_config("fashion_mnist_lt", ["model.ch=64", "train.batch_size=32", "method.names=[ccua,cbdm]",
                                              "method.ccua.alpha=0.5", "data.balanced_resampling=0.1"])
    assert config.model.ch == 64 and config.train.batch_size == 32
    assert config.method.names == ["ccua", "cbdm"] and config.method.ccua.alpha == 0.5
    assert parse_overrides(["a.b=1", "a.c=x"]) == {"a": {"b": 1, "c": "x"}}


def test_yaml_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: fashion_mnist_lt\ntrain:\n  steps: 5\n")
    config = load_config(str(path))
    assert config.train.steps == 5 and config.data.name == "fashion_mnist"


@pytest.mark.parametrize("override, message", [
    ("model.chh=3", r"unknown config key 'chh' in 'model' \(valid keys: arch, ch,"),
    ("nope.x=1", r"unknown config key 'nope'"),
    ("method.names=[ccua,magic]", r"unknown method\(s\) \['magic'\] \(valid: plain,"),
    ("method.names=[oclt] diffusion.objective=flow", r"oclt needs the ddpm objective"),
    ("model.ch=wide", r"model.ch must be an integer"),
    ("data.imbalance=2", r"imbalance must be in"),
    ("sample.sampler=euler", r"is for the flow objective"),
    ("train.optimizer=sgd", r"train.optimizer='sgd' is not one of"),
])
def test_bad_settings_name_the_fix(override, message):
    with pytest.raises(ConfigError, match=message):
        load_checked_config("fashion_mnist_lt", override.split())


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ConfigError, match="presets: .*fashion_mnist_lt"):
        load_config("no_such_preset")
