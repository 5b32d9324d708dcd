"""The command line as a user runs it: train a few steps, sample, inspect data, bad input."""

import subprocess
import sys

import numpy as np
import yaml
from PIL import Image

from ccua.cli import main
from tests.conftest import tiny_config_dict


def _write_config(tmp_path, **sections):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(tmp_path / "runs", **sections)))
    return path


def test_train_then_sample(tmp_path, capsys):
    config = _write_config(tmp_path)
    assert main(["train", str(config), "train.steps=2", "train.ckpt_every=0"]) == 0
    run = tmp_path / "runs" / "000-tiny"
    assert (run / "checkpoints" / "0000002.pt").exists()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["steps"] == 2  # the resolved config, overrides included

    out = tmp_path / "samples"
    assert main(["sample", str(run), "--out", str(out), "--per-class", "2", "--steps", "2", "--guidance", "1.5",
                 "--seed", "3"]) == 0
    data = np.load(out / "images.npz")
    assert data["arr_0"].shape == (20, 8, 8, 1) and data["arr_0"].dtype == np.uint8  # the ADM/DiT layout
    assert data["arr_1"].tolist() == np.repeat(np.arange(10), 2).tolist()
    assert len(list((out / "png").glob("*.png"))) == 20
    with Image.open(out / "grid.png") as grid:
        assert grid.size[0] > 8
    info = yaml.safe_load((out / "sample_info.json").read_text())
    assert info["step"] == 2 and info["sample_guidance"] == 1.5 and info["seed"] == 3 and info["ema"] is True

    # the same seed gives the same images
    again = tmp_path / "again"
    main(["sample", str(run / "checkpoints" / "0000002.pt"), "--out", str(again), "--per-class", "2", "--steps", "2",
          "--guidance", "1.5", "--seed", "3", "--no-png"])
    assert np.array_equal(np.load(again / "images.npz")["arr_0"], data["arr_0"])
    assert main(["sample", str(run), "--out", str(tmp_path / "some"), "--labels", "2,5", "--per-class", "2",
                 "--steps", "1", "--no-png"]) == 0
    assert np.load(tmp_path / "some" / "images.npz")["arr_1"].tolist() == [2, 2, 5, 5]


def test_resume_latest_from_the_cli(tmp_path):
    config = _write_config(tmp_path)
    main(["train", str(config), "train.steps=3"])
    assert main(["train", str(config), "train.steps=4", "--resume", "latest"]) == 0
    assert (tmp_path / "runs" / "000-tiny" / "checkpoints" / "0000004.pt").exists()
    assert not (tmp_path / "runs" / "001-tiny").exists()


def test_data_prints_counts_and_groups(capsys):
    assert main(["data", "fashion_mnist_lt"]) == 0
    out = capsys.readouterr().out
    assert "14886 images" in out and "Ankle boot" in out and "tail: classes 7-9, 326 images" in out


def test_dry_run_prints_the_resolved_config(capsys):
    assert main(["train", "cifar10_lt", "model.unet.ch=64", "--dry-run"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"]["unet"]["ch"] == 64
    # overrides may also come after the options
    assert main(["train", "cifar10_lt", "--dry-run", "model.unet.ch=32", "train.lr=0.001"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["model"]["unet"]["ch"] == 32 and resolved["train"]["lr"] == 0.001


def test_bad_input_gives_one_line_and_exit_code_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ccua.cli", "train", "fashion_mnist_lt", "model.unet.chh=3"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "ccua: error: unknown config key 'chh' in 'model.unet' (valid keys: ch, ch_mult, attn_resolutions, "
        "num_res_blocks, dropout, null_embedding)"]
    missing = subprocess.run([sys.executable, "-m", "ccua.cli", "sample", str(tmp_path / "nothing")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "neither a run folder nor a checkpoint" in missing.stderr


def test_a_sampler_of_another_objective_is_refused_before_sampling(tmp_path, capsys):
    import yaml

    from tests.conftest import tiny_config_dict

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tmp_path / "runs", train={"steps": 0})))
    assert main(["train", str(config), "--device", "cpu"]) == 0
    run = tmp_path / "runs" / "000-tiny"
    capsys.readouterr()
    for command in (["sample", str(run), "--out", str(tmp_path / "s")], ["evaluate", str(run), "--features", "random"]):
        assert main(command + ["--sampler", "heun"]) == 2
        assert capsys.readouterr().err.strip() == ("ccua: error: sampler 'heun' is for the flow objective; "
                                                   "use ddim, ddpm, dpm++ or unipc")
    assert not (tmp_path / "s").exists() and not (run / "eval").exists()


def test_sampler_options_and_overrides_combine_and_must_agree(tmp_path, capsys):
    config = _write_config(tmp_path, train={"steps": 0})
    assert main(["train", str(config), "--device", "cpu"]) == 0
    run, out = tmp_path / "runs" / "000-tiny", tmp_path / "s"
    assert main(["sample", str(run), "--out", str(out), "--per-class", "1", "--steps", "2", "--no-png",
                 "sample.ddim.eta=1.0", "sample.batch_size=4"]) == 0
    info = yaml.safe_load((out / "sample_info.json").read_text())
    assert (info["sample_steps"], info["sample_batch_size"], info["sample_ddim"]) == (2, 4, {"eta": 1.0})
    capsys.readouterr()
    # --eta is sample.ddim.eta's old spelling: the two naming different values is an error, not a silent choice
    assert main(["sample", str(run), "--out", str(tmp_path / "t"), "--eta", "0.5", "sample.ddim.eta=1.0"]) == 2
    assert "sample.eta=0.5 and sample.ddim.eta=1.0 name the same setting" in capsys.readouterr().err
