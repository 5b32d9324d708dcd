"""Presets, YAML files, overrides and validation."""

import pytest

from ccua.build import build_objective, load_checked_config, stored_config
from ccua.config import ConfigError, load_config, parse_overrides, preset_names


def test_presets_resolve():
    names = preset_names()
    for required in ("fashion_mnist_lt", "mnist_lt", "cifar10_lt", "cifar100_lt", "tinyimagenet_lt"):
        assert required in names
    for name in names:
        load_checked_config(name)
    cifar = load_config("cifar10_lt")
    assert (cifar.model.unet.ch, cifar.model.unet.ch_mult, cifar.model.unet.attn_resolutions) == (128, [1, 2, 2, 2], [16])
    assert cifar.method.ccua.alpha == cifar.method.ccua.gamma == 1.0 and cifar.data.hflip
    tiny = load_config("tinyimagenet_lt")
    assert tiny.data.balanced_resampling == 0.1 and tiny.data.name == "image_folder"
    assert load_config("cifar100_lt").data.name == "cifar100"


def test_dotted_overrides():
    config = load_config("fashion_mnist_lt", ["model.unet.ch=64", "train.batch_size=32", "method.names=[ccua,cbdm]",
                                              "method.ccua.alpha=0.5", "data.balanced_resampling=0.1"])
    assert config.model.unet.ch == 64 and config.train.batch_size == 32
    assert config.method.names == ["ccua", "cbdm"] and config.method.ccua.alpha == 0.5
    assert parse_overrides(["a.b=1", "a.c=x"]) == {"a": {"b": 1, "c": "x"}}


def test_each_section_hands_out_the_settings_of_the_plug_in_it_chooses():
    dit = load_config("fashion_mnist_lt", ["model.arch=dit", "model.dit.depth=3", "diffusion.objective=flow",
                                           "sample.sampler=dopri5", "sample.dopri5.atol=0.001"])
    assert dit.model.chosen_settings() is dit.model.dit and dit.model.chosen_settings().depth == 3
    assert dit.sample.chosen_settings().atol == 0.001
    assert dit.diffusion.chosen_settings() is None  # the flow objective has no settings of its own
    unet = load_config("fashion_mnist_lt")
    assert unet.model.chosen_settings() is unet.model.unet and unet.diffusion.chosen_settings().timesteps == 1000
    assert unet.method.settings_of("ccua") is unet.method.ccua and unet.method.settings_of("plain") is None
    with pytest.raises(TypeError, match="several plug-ins at once"):
        unet.method.chosen_settings()  # methods combine: there is no one chosen method


def test_yaml_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: fashion_mnist_lt\ntrain:\n  steps: 5\n")
    config = load_config(str(path))
    assert config.train.steps == 5 and config.data.name == "fashion_mnist"


@pytest.mark.parametrize("override, message", [
    ("model.unet.chh=3", r"unknown config key 'chh' in 'model.unet' \(valid keys: ch, ch_mult,"),
    ("nope.x=1", r"unknown config key 'nope'"),
    ("method.names=[ccua,magic]", r"unknown method\(s\) \['magic'\] \(valid: plain,"),
    ("method.names=[oclt] diffusion.objective=flow", r"oclt needs the ddpm objective"),
    ("model.unet.ch=wide", r"model.unet.ch must be an integer"),
    ("data.imbalance=2", r"data.imbalance=2.0 must be in \(0, 1\]"),
    ("sample.sampler=euler", r"is for the flow objective"),
    ("train.optimizer=sgd", r"train.optimizer='sgd' is not one of"),
])
def test_bad_settings_name_the_fix(override, message):
    with pytest.raises(ConfigError, match=message):
        load_checked_config("fashion_mnist_lt", override.split())


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ConfigError, match="presets: .*fashion_mnist_lt"):
        load_config("no_such_preset")


# ------------------------------------------------------------------ the model settings of the flat layout

FLAT_MODEL = "model:\n  arch: unet\n  ch: 16\n  ch_mult: [1, 2]\n  attn_resolutions: [4]\n  dropout: 0.2\n"


@pytest.fixture
def fresh_warnings(monkeypatch):
    """Forget which old keys were already warned about in this process."""
    import ccua.config.history

    monkeypatch.setattr(ccua.config.history, "_warned_keys", set())


def test_old_model_keys_of_user_files_are_moved_with_one_warning(tmp_path, caplog, fresh_warnings):
    path = tmp_path / "old.yaml"
    path.write_text("base: fashion_mnist_lt\n" + FLAT_MODEL)
    with caplog.at_level("WARNING", logger="ccua.config"):
        config = load_checked_config(str(path))
    unet = config.model.unet
    assert (unet.ch, unet.ch_mult, unet.attn_resolutions, unet.dropout, unet.num_res_blocks) == (16, [1, 2], [4], 0.2, 1)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "model.ch -> model.unet.ch" in warnings[0] and "model.dropout -> model.unet.dropout" in warnings[0]
    assert str(path) in warnings[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="ccua.config"):
        load_config(str(path), ["model.ch=24"])  # the old name of an override wins over the file's setting
    assert not caplog.records  # each old key is named once per process
    assert load_config(str(path), ["model.ch=24"]).model.unet.ch == 24
    assert load_config("fashion_mnist_lt", ["model.encoder_depth=N/2"]).model.dit.encoder_depth == "N/2"


def test_ddpm_schedule_keys_of_earlier_configs_move_into_the_objectives_section(tmp_path, caplog, fresh_warnings):
    path = tmp_path / "old.yaml"
    path.write_text("base: fashion_mnist_lt\ndiffusion:\n  timesteps: 500\n  beta_end: 0.03\n")
    with caplog.at_level("WARNING", logger="ccua.config"):
        config = load_checked_config(str(path), ["diffusion.beta_start=0.001"])
    ddpm = config.diffusion.ddpm
    assert (ddpm.timesteps, ddpm.beta_start, ddpm.beta_end) == (500, 0.001, 0.03)
    assert "diffusion.timesteps -> diffusion.ddpm.timesteps" in caplog.text
    assert build_objective(config.diffusion).timesteps == 500
    stored = config.to_dict()
    stored["diffusion"] = {"objective": "ddpm", "timesteps": 250, "beta_start": 1e-4, "beta_end": 0.02,
                           "label_drop_prob": 0.1, "label_drop_mode": "sample"}  # a checkpoint's config of before
    assert stored_config(stored).diffusion.ddpm.timesteps == 250


def test_image_folder_keys_of_earlier_configs_move_into_its_section_and_only_its_reading_may_change_on_resume(
        tmp_path, caplog, fresh_warnings):
    from ccua.runs import resume_changes

    path = tmp_path / "old.yaml"
    path.write_text(f"base: fashion_mnist_lt\ndata:\n  name: image_folder\n  root: {tmp_path}\n"
                    "  split_file: lt_train.txt\n  test_split_file: lt_test.txt\n")
    with caplog.at_level("WARNING", logger="ccua.config"):
        saved = load_checked_config(str(path))
    folder = saved.data.image_folder
    assert (folder.split_file, folder.test_split_file, folder.allow_outside_root) == ("lt_train.txt", "lt_test.txt",
                                                                                     False)
    assert "data.split_file -> data.image_folder.split_file" in caplog.text
    # where the evaluation reference and the files are read may change on resume; the training split may not
    reading = load_checked_config(str(path), ["data.image_folder.test_split_file=other_test.txt",
                                              "data.image_folder.allow_outside_root=true"])
    allowed, refused = resume_changes(saved, reading)
    assert set(allowed) == {"data.image_folder.test_split_file", "data.image_folder.allow_outside_root"}
    assert refused == {}
    allowed, refused = resume_changes(saved, load_checked_config(str(path), ["data.image_folder.split_file=b.txt"]))
    assert refused == {"data.image_folder.split_file": ["lt_train.txt", "b.txt"]}


def test_one_setting_under_both_names_must_agree(tmp_path, fresh_warnings):
    path = tmp_path / "both.yaml"
    path.write_text("model:\n  ch: 16\n  unet:\n    ch: 32\n")
    with pytest.raises(ConfigError, match=r"model.ch=16 and model.unet.ch=32 name the same setting .* keep model.unet.ch"):
        load_config(str(path))
    path.write_text("model:\n  ch: 32\n  unet:\n    ch: 32\n")
    assert load_config(str(path)).model.unet.ch == 32


def test_a_dit_size_fills_depth_and_width_and_refuses_other_values(fresh_warnings):
    config = load_checked_config("sit_s2_imagenet_lt256")  # size SiT-S/2
    dit = config.model.dit
    assert (dit.size, dit.depth, dit.hidden_size, dit.num_heads, dit.patch_size) == ("SiT-S/2", 12, 384, 6, 2)
    assert load_checked_config("sit_s2_imagenet_lt256", ["model.dit.depth=12"]).model.dit.depth == 12  # the same
    for override in ("model.dit.depth=8", "model.depth=8", "model.dit.hidden_size=256"):
        with pytest.raises(ConfigError, match=r"model.dit.size='SiT-S/2' sets depth=12, hidden_size=384, .*"
                                              r"but model.dit.(depth=8|hidden_size=256) is also given: remove one"):
            load_checked_config("sit_s2_imagenet_lt256", [override])
    with pytest.raises(ConfigError, match="model.dit.size: unknown DiT size 'SiT-M/2'"):
        load_checked_config("sit_s2_imagenet_lt256", ["model.dit.size=SiT-M/2"])


def test_stored_configs_of_the_flat_layout_load_silently(caplog, fresh_warnings):
    """What a checkpoint of the flat layout holds, including a size next to the depth it overrode
    when it was trained: read without a warning, the size standing for the architecture."""
    from ccua.build import stored_config

    flat = {"arch": "dit", "ch": 128, "ch_mult": [1, 2, 2, 2], "attn_resolutions": [16], "num_res_blocks": 2,
            "dropout": 0.1, "dit_size": "DiT-S/4", "depth": 3, "hidden_size": 128, "num_heads": 4, "patch_size": 2,
            "mlp_ratio": 4.0, "encoder_depth": "N/2"}
    with caplog.at_level("WARNING"):
        config = stored_config({"data": {"resolution": 8}, "model": flat, "diffusion": {"objective": "flow"},
                                "sample": {"sampler": "euler"}})
    assert not caplog.records
    dit = config.model.dit
    assert (dit.size, dit.depth, dit.hidden_size, dit.patch_size, dit.encoder_depth) == ("DiT-S/4", 12, 384, 4, "N/2")
    assert config.model.unet.ch_mult == [1, 2, 2, 2]
