"""Latent training end to end from the command line: encode once, train a SiT with CCUA, sample."""

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("diffusers")

from diffusers import AutoencoderKL  # noqa: E402

from ccua.cli import main  # noqa: E402


@pytest.fixture
def vae_folder(tmp_path):
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4, sample_size=16)
    path = tmp_path / "vae"
    vae.save_pretrained(path)
    return path


def test_encode_train_sample_in_latent_space(tmp_path, image_folder, vae_folder):
    cache = tmp_path / "latents.pt"
    assert main(["data", "encode", "data.name=image_folder", f"data.root={image_folder}", "data.resolution=16",
                 "data.imbalance=null", "--vae", str(vae_folder), "--out", str(cache), "--hflip-copies"]) == 0
    config = {
        "name": "sit_latent",
        "data": {"name": "latents", "root": str(cache), "vae": str(vae_folder), "hflip": True, "imbalance": None,
                 "resolution": 8},
        "model": {"arch": "dit", "dit": {"depth": 2, "hidden_size": 32, "num_heads": 2, "patch_size": 2,
                                         "encoder_depth": "N/2"}},
        "diffusion": {"objective": "flow"},
        "method": {"names": ["ccua"], "ccua": {"alpha": 0.05, "gamma": 0.05}},
        "train": {"steps": 2, "batch_size": 4, "out_dir": str(tmp_path / "runs"), "progress": False,
                  "ckpt_every": 0, "log_every": 1},
        "sample": {"sampler": "euler", "steps": 2, "grid_per_class": 2, "guidance": 1.0},
    }
    path = tmp_path / "sit.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path)]) == 0
    run = tmp_path / "runs" / "000-sit_latent"
    assert (run / "samples" / "grid_0000002.png").exists()
    out = tmp_path / "samples"
    assert main(["sample", str(run), "--out", str(out), "--per-class", "1", "--sampler", "heun", "--steps", "2"]) == 0
    images = np.load(out / "images.npz")["arr_0"]
    assert images.shape == (3, 16, 16, 3)  # decoded by the VAE back to pixels
