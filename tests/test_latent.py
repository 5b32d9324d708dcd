"""Latent space with a tiny randomly initialised AutoencoderKL (no network access, ever)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

pytest.importorskip("diffusers")

from diffusers import AutoencoderKL  # noqa: E402

from ccua.latent import (LATENT_SCALE, LatentDataset, decode_latents, encode_dataset, encode_images,  # noqa: E402
                         load_vae)


@pytest.fixture(scope="module")
def vae() -> AutoencoderKL:
    """Two levels (16x16 images -> 8x8 latents), 4 latent channels, ~15k parameters."""
    torch.manual_seed(0)
    model = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                          down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                          block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4, sample_size=16)
    return model.eval().requires_grad_(False)


class TinyImages(Dataset):
    """(image in [-1, 1], label) with the attributes encode_dataset reads."""

    def __init__(self, n: int = 10, num_classes: int = 3):
        gen = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 3, 16, 16, generator=gen) * 2 - 1
        self.labels = (np.arange(n) % num_classes).astype(np.int64)
        self.num_classes = num_classes
        self.class_names = [f"class{c}" for c in range(num_classes)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


def test_encode_uses_the_scaled_posterior_mean(vae):
    images = TinyImages(4).images
    latents = encode_images(vae, images, batch_size=3)
    assert latents.shape == (4, 4, 8, 8) and latents.dtype == torch.float32
    with torch.no_grad():
        expected = vae.encode(images).latent_dist.mean * LATENT_SCALE
    torch.testing.assert_close(latents, expected)
    # deterministic: the mean, not a draw
    torch.testing.assert_close(encode_images(vae, images), latents)


def test_uint8_and_float_images_encode_alike(vae):
    uint8 = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    as_float = uint8.float() / 127.5 - 1
    torch.testing.assert_close(encode_images(vae, uint8), encode_images(vae, as_float))


def test_grey_images_are_encoded_as_rgb(vae):
    grey = torch.rand(2, 1, 16, 16) * 2 - 1
    torch.testing.assert_close(encode_images(vae, grey), encode_images(vae, grey.repeat(1, 3, 1, 1)))


def test_decode_latents(vae):
    latents = torch.randn(3, 4, 8, 8)
    images = decode_latents(vae, latents, batch_size=2)
    assert images.shape == (3, 3, 16, 16) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    with torch.no_grad():
        expected = vae.decode(latents / LATENT_SCALE).sample.clamp(-1, 1)
    torch.testing.assert_close(images, expected)


def test_cache_round_trip(vae, tmp_path):
    data = TinyImages(10)
    path = encode_dataset(data, vae, tmp_path / "cache" / "latents.pt", batch_size=4, progress=False,
                          dtype=torch.float32)
    assert path.is_file() and os.listdir(path.parent) == ["latents.pt"]  # no temporary file left
    cache = torch.load(path, weights_only=True)
    assert "latents_flipped" not in cache
    latents = LatentDataset(path)
    assert len(latents) == 10
    assert (latents.channels, latents.resolution, latents.num_classes) == (4, 8, 3)
    assert latents.labels.dtype == np.int64 and np.array_equal(latents.labels, data.labels)
    assert latents.class_counts() == [4, 3, 3] and latents.class_names == data.class_names
    expected = encode_images(vae, data.images)
    for i in range(10):
        z, y = latents[i]
        assert z.dtype == torch.float32 and y == data.labels[i]
        torch.testing.assert_close(z, expected[i], rtol=0, atol=0)
    with pytest.raises(ValueError, match="hflip_copies"):
        LatentDataset(path, hflip=True)


def test_float16_cache_with_flipped_copies(vae, tmp_path):
    data = TinyImages(6)
    path = encode_dataset(data, vae, tmp_path / "latents.pt", batch_size=4, hflip_copies=True, progress=False)
    cache = torch.load(path, weights_only=True)
    assert cache["latents"].dtype == torch.float16 and cache["latents_flipped"].shape == (6, 4, 8, 8)
    flipped = encode_images(vae, data.images.flip(-1))
    torch.testing.assert_close(cache["latents_flipped"].float(), flipped, rtol=1e-3, atol=1e-3)  # fp16 rounding
    assert not torch.allclose(cache["latents_flipped"], cache["latents"])

    plain, with_flip = LatentDataset(path), LatentDataset(path, hflip=True)
    assert len(with_flip) == 6 and np.array_equal(with_flip.labels, data.labels)  # counts unchanged
    torch.manual_seed(0)
    draws = [with_flip[2][0] for _ in range(40)]
    original, mirrored = plain.latents[2].float(), cache["latents_flipped"][2].float()
    is_original = [torch.equal(z, original) for z in draws]
    assert all(o or torch.equal(z, mirrored) for z, o in zip(draws, is_original))
    assert 5 < sum(is_original) < 35  # about half (P(outside) ~ 1e-5 for a fair coin)
    # the coin comes from torch's global generator: a seed replays it
    torch.manual_seed(0)
    assert [torch.equal(with_flip[2][0], original) for _ in range(40)] == is_original


def test_failed_write_keeps_the_old_cache(vae, tmp_path, monkeypatch):
    path = encode_dataset(TinyImages(3), vae, tmp_path / "latents.pt", progress=False)
    before = path.read_bytes()

    def broken_save(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        encode_dataset(TinyImages(5), vae, path, progress=False)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["latents.pt"]


def test_mismatched_labels_are_refused(vae, tmp_path):
    class Mismatch(TinyImages):
        """Items whose labels disagree with .labels: the cache would mislabel images."""

        def __getitem__(self, i):
            return self.images[i], 1

    with pytest.raises(ValueError, match="labels"):
        encode_dataset(Mismatch(4), vae, tmp_path / "x.pt", progress=False)
    assert not (tmp_path / "x.pt").exists()


def test_load_vae_from_a_local_folder(vae, tmp_path):
    vae.save_pretrained(tmp_path / "vae")
    loaded = load_vae(str(tmp_path / "vae"))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    images = TinyImages(2).images
    torch.testing.assert_close(encode_images(loaded, images), encode_images(vae, images))


@pytest.mark.parametrize("name", ["ccua-tests/no-such-vae", "missing/folder/vae"])
def test_load_vae_missing_says_how_to_fetch(name):
    with pytest.raises(FileNotFoundError, match="Hugging Face cache") as info:
        load_vae(name, local_files_only=True)
    assert "hf download" in str(info.value)


def test_load_vae_without_diffusers_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ImportError, match="pip install diffusers"):
        load_vae("anything")


def test_missing_cache_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="encode_dataset"):
        LatentDataset(tmp_path / "none.pt")
