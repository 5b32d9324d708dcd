"""The U-Net's null class: a zero vector (the released convention, the default) or a learned row."""

from __future__ import annotations

import pytest
import torch

from ccua.build import load_checked_config
from ccua.checkpoint import list_checkpoints, load_checkpoint
from ccua.config import ConfigError, config_from_dict
from ccua.training import train
from tests.conftest import tiny_config_dict


def _trained_null_row(tmp_path, null_embedding: str) -> tuple[torch.Tensor, torch.Tensor]:
    config = config_from_dict(tiny_config_dict(tmp_path / null_embedding, model={
        "unet": {"null_embedding": null_embedding}}))
    run = train(config)
    state = load_checkpoint(list_checkpoints(run / "checkpoints")[-1])
    # the null class is the table's last row
    return state["model"]["class_emb.weight"][-1], state["ema"]["class_emb.weight"][-1]


def test_the_zero_null_stays_zero_through_ccua_training_and_the_learned_one_is_a_real_row(tmp_path):
    model_row, ema_row = _trained_null_row(tmp_path, "zero")
    assert torch.count_nonzero(model_row) == 0 and torch.count_nonzero(ema_row) == 0
    model_row, ema_row = _trained_null_row(tmp_path, "learned")
    assert torch.count_nonzero(model_row) > 0


def test_presets_use_the_released_zero_null_and_stored_configs_keep_what_they_were_trained_with():
    assert load_checked_config("fashion_mnist_lt").model.unet.null_embedding == "zero"
    assert load_checked_config("cifar10_lt").model.unet.null_embedding == "zero"
    before_the_setting = config_from_dict({"model": {"arch": "unet", "unet": {"ch": 8}}}, stored=True)
    assert before_the_setting.model.unet.null_embedding == "learned"
    written_with_it = config_from_dict({"model": {"arch": "unet", "unet": {"null_embedding": "zero"}}}, stored=True)
    assert written_with_it.model.unet.null_embedding == "zero"


def test_an_unknown_null_convention_is_refused():
    with pytest.raises(ConfigError, match="null_embedding"):
        load_checked_config("fashion_mnist_lt", ["model.unet.null_embedding=random"])
