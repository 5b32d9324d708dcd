"""Shared fixtures: tiny configs that train in seconds on two CPU cores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ccua.config import Config, config_from_dict


def tiny_config_dict(out_dir: Path, **sections) -> dict:
    """A U-Net of a few thousand parameters on 8x8 Fashion-MNIST-LT with 60 head images."""
    base = {
        "name": "tiny",
        "data": {"name": "fashion_mnist", "resolution": 8, "imbalance": 0.1, "n_max": 40},
        "model": {"arch": "unet", "unet": {"ch": 8, "ch_mult": [1, 2], "attn_resolutions": [4], "num_res_blocks": 1,
                                           "dropout": 0.1}},
        "method": {"names": ["ccua"]},
        "train": {"steps": 6, "batch_size": 8, "lr": 1e-3, "ckpt_every": 3, "log_every": 2, "ema_decay": 0.9,
                  "out_dir": str(out_dir), "progress": False},
        "sample": {"sampler": "ddim", "steps": 3, "grid_per_class": 2, "guidance": 1.0},
    }
    return merge_sections(base, sections)


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    """``actual`` equals ``expected`` up to float rounding of another summation order: every element
    within ``rel`` times the largest magnitude in ``expected`` (an element near zero is held to the
    tensor's scale, not its own, so CPUs that sum in another order pass alike)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = expected.abs().max().item()
    difference = (actual.double() - expected.double()).abs().max().item()
    assert difference <= rel * scale, f"largest difference {difference:.3g} exceeds {rel:g} x scale {scale:.3g}"


def merge_sections(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` merged in, section by section and key by key."""
    out = dict(base)
    for key, value in changes.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merge_sections(out[key], value) if nested else value
    return out


@pytest.fixture
def tiny_config(tmp_path) -> Config:
    return config_from_dict(tiny_config_dict(tmp_path / "runs"))


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """A real folder of PNGs: 3 classes with 6, 4 and 2 images of 12x10 colour pixels."""
    root = tmp_path / "images"
    rng = np.random.RandomState(0)
    for c, n in enumerate([6, 4, 2]):
        (root / f"class_{c}").mkdir(parents=True)
        for i in range(n):
            pixels = rng.randint(0, 255, (12, 10, 3), dtype=np.uint8)
            pixels[..., c] = 255  # each class has one saturated channel, so labels can be checked
            Image.fromarray(pixels).save(root / f"class_{c}" / f"img{i}.png")
    return root


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
