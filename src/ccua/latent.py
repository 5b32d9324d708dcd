"""Latent space: the Stable Diffusion VAE, a latent cache on disk and a Dataset over it.

SiT trains on VAE latents times 0.18215 (SPEC section 4). Encoding once and caching the latents
takes the VAE out of the training step. The cache is one ``torch.save`` file of plain tensors
and numbers (loaded back with ``weights_only=True``):

- ``latents``: [N, C, h, w], float16 by default (halves the size; the latents are O(1) numbers)
- ``latents_flipped``: the same for the horizontally flipped images (only with hflip copies)
- ``labels``: int64 [N]; ``num_classes``: int; ``class_names``: list of str (when the data set
  has them); ``scale``: the factor the latents carry; ``format_version``: int
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ccua.checkpoint import check_archive_sizes
from ccua.progress import progress_bar

#: The factor SD-VAE latents are multiplied by so that they have roughly unit variance.
LATENT_SCALE = 0.18215
DEFAULT_VAE = "stabilityai/sd-vae-ft-ema"
_FORMAT_VERSION = 1


def load_vae(name_or_path: str = DEFAULT_VAE, local_files_only: bool = True, subfolder: str | None = None):
    """A diffusers ``AutoencoderKL`` in eval mode with gradients off.

    ``name_or_path`` is a local folder (holding config.json and the weights) or a Hugging Face
    repository id. With ``local_files_only`` (the default, so nothing is downloaded behind the
    user's back) a repository id must already be in the Hugging Face cache.
    """
    try:
        from diffusers import AutoencoderKL
    except ImportError as err:
        raise ImportError("latent space needs diffusers: pip install diffusers") from err
    kwargs: dict[str, Any] = {"local_files_only": local_files_only}
    if subfolder:
        kwargs["subfolder"] = subfolder
    try:
        with warnings.catch_warnings():
            # diffusers passes a deprecated argument to huggingface_hub: noise, not the user's concern
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
            vae = AutoencoderKL.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as err:
        if not local_files_only:
            raise
        raise FileNotFoundError(
            f"the VAE {name_or_path!r} is neither a local folder nor in the Hugging Face cache "
            f"(loading with local_files_only=True). Fetch it once on a machine with internet, e.g. "
            f"`hf download {DEFAULT_VAE} --local-dir vae/sd-vae-ft-ema` and pass that folder, or "
            f"load it once with local_files_only=False to fill the cache. ({err})"
        ) from err
    vae.eval().requires_grad_(False)
    return vae


def _vae_device_dtype(vae) -> tuple[torch.device, torch.dtype]:
    param = next(vae.parameters())
    return param.device, param.dtype


def to_unit_range(images: Tensor) -> Tensor:
    """uint8 images in [0, 255] -> float in [-1, 1]; float images are taken to be in [-1, 1]."""
    if images.dtype == torch.uint8:
        return images.float() / 127.5 - 1.0
    return images.float()


@torch.no_grad()
def encode_images(vae, images: Tensor, batch_size: int = 32, scale: float = LATENT_SCALE) -> Tensor:
    """Latents * scale of images [N, C, H, W] (uint8 in [0, 255] or float in [-1, 1]; grey images
    are repeated to RGB for an RGB VAE).

    Uses the mean of the VAE's latent distribution, not a draw from it, so a cache holds one
    deterministic latent per image. DiT/SiT training instead draws mean + std * noise afresh each
    step; the posterior's (small) noise it adds is an augmentation a cache of means leaves out.
    The result is float32 on the device of ``images``.
    """
    device, dtype = _vae_device_dtype(vae)
    vae_channels = int(vae.config.in_channels)
    out = []
    for start in range(0, images.shape[0], batch_size):
        chunk = to_unit_range(images[start:start + batch_size]).to(device=device, dtype=dtype)
        if chunk.shape[1] == 1 and vae_channels == 3:
            chunk = chunk.expand(-1, 3, -1, -1)  # grey images as RGB
        out.append((vae.encode(chunk).latent_dist.mean * scale).float().to(images.device))
    return torch.cat(out)


@torch.no_grad()
def decode_latents(vae, latents: Tensor, batch_size: int = 32, scale: float = LATENT_SCALE) -> Tensor:
    """Images in [-1, 1] (float32, on the device of ``latents``) from latents * scale."""
    device, dtype = _vae_device_dtype(vae)
    out = []
    for start in range(0, latents.shape[0], batch_size):
        chunk = (latents[start:start + batch_size].float() / scale).to(device=device, dtype=dtype)
        out.append(vae.decode(chunk).sample.float().clamp(-1, 1).to(latents.device))
    return torch.cat(out)


def encode_dataset(dataset: Dataset, vae, path: str | os.PathLike, batch_size: int = 32,
                   hflip_copies: bool = False, progress: bool = True, dtype: torch.dtype = torch.float16,
                   num_workers: int = 0) -> Path:
    """Encode every image of ``dataset`` and write the latent cache to ``path``.

    ``dataset`` returns (image float tensor [C, H, W] in [-1, 1], int label) without random
    augmentation, and has ``labels`` (np.ndarray) and ``num_classes``. With ``hflip_copies`` the
    horizontally flipped images are encoded too (a latent of a flipped image is not exactly the
    flipped latent, so flips are encoded, not applied to latents). The file is written to a
    temporary name beside ``path`` and renamed, so a crash never leaves a half-written cache.
    """
    if dtype not in (torch.float16, torch.float32, torch.bfloat16):
        raise ValueError(f"latent dtype must be a float type, got {dtype}")
    path = Path(path)
    n = len(dataset)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    # Filled in place: a list of batches plus torch.cat would need twice the memory at the end.
    latents: Tensor | None = None
    flipped: Tensor | None = None
    labels = torch.empty(n, dtype=torch.int64)
    start = 0
    for images, batch_labels in progress_bar(loader, desc="encoding", disable=not progress, leave=False):
        z = encode_images(vae, images, batch_size).to("cpu", dtype)
        if latents is None:
            latents = torch.empty((n, *z.shape[1:]), dtype=dtype)
            flipped = torch.empty_like(latents) if hflip_copies else None
        end = start + z.shape[0]
        latents[start:end] = z
        if flipped is not None:
            flipped[start:end] = encode_images(vae, images.flip(-1), batch_size).to("cpu", dtype)
        labels[start:end] = torch.as_tensor(batch_labels, dtype=torch.int64)
        start = end
    if latents is None or start != n:
        raise ValueError(f"the data set yielded {start} images, expected {n}")
    expected = np.asarray(dataset.labels, dtype=np.int64)
    if not np.array_equal(labels.numpy(), expected):
        raise ValueError("the labels the dataset returned differ from its .labels attribute")
    cache: dict[str, Any] = {
        "latents": latents,
        "labels": labels,
        "num_classes": int(dataset.num_classes),
        "scale": float(LATENT_SCALE),
        "format_version": _FORMAT_VERSION,
    }
    names = getattr(dataset, "class_names", None)
    if names is not None and len(names) == cache["num_classes"]:
        cache["class_names"] = [str(n) for n in names]
    if flipped is not None:
        cache["latents_flipped"] = flipped
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(cache, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class LatentDataset(Dataset):
    """The latent cache written by :func:`encode_dataset`, as (latent float32 [C, h, w], label).

    With ``hflip`` each access returns the flipped image's latent with probability 1/2, drawn
    from torch's global generator (as a random-flip transform does on pixels, so seeded runs and
    DataLoader workers reproduce). The dataset keeps N items and ``labels`` keeps the true class
    counts, which class priors, resampling and head/tail groups rely on. ``hflip`` needs a cache
    encoded with ``hflip_copies=True``.
    """

    def __init__(self, path: str | os.PathLike, hflip: bool = False):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no latent cache at {self.path}: write one with ccua.latent.encode_dataset")
        # mmap: a large cache is paged in on demand and shared by DataLoader workers.
        check_archive_sizes(self.path, "latent cache")
        cache = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
        missing = [k for k in ("latents", "labels", "num_classes") if k not in cache]
        if missing:
            raise ValueError(f"{self.path} is not a latent cache (missing {', '.join(missing)})")
        self.latents: Tensor = cache["latents"]
        self.latents_flipped: Tensor | None = cache.get("latents_flipped")
        self.labels = cache["labels"].numpy().astype(np.int64)
        self.num_classes = int(cache["num_classes"])
        self.class_names = list(cache.get("class_names") or [str(c) for c in range(self.num_classes)])
        self.scale = float(cache.get("scale", LATENT_SCALE))
        self.channels = int(self.latents.shape[1])
        self.resolution = int(self.latents.shape[-1])
        if hflip and self.latents_flipped is None:
            raise ValueError(f"hflip needs a cache with flipped copies; {self.path} has none "
                             f"(re-encode with encode_dataset(..., hflip_copies=True) or set hflip off)")
        self.hflip = hflip

    def __len__(self) -> int:
        return int(self.latents.shape[0])

    def class_counts(self) -> list[int]:
        """Training images per class (flipped copies are not extra images)."""
        return np.bincount(self.labels, minlength=self.num_classes).tolist()

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        source = self.latents
        if self.hflip and torch.rand(()) < 0.5:
            source = self.latents_flipped
        return source[index].float(), int(self.labels[index])
