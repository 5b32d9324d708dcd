"""Drawing samples from a trained model and writing them out (PNGs, .npz, grids, provenance)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ccua.config import Config, SampleConfig, config_from_dict
from ccua.data.dataset import to_uint8
from ccua.diffusion import build_objective, guided_prediction
from ccua.images import save_grid
from ccua.models import build_model
from ccua.training.checkpoint import list_checkpoints, load_checkpoint

log = logging.getLogger(__name__)


def initial_noise(shape: tuple[int, ...], seed: int, start: int = 0) -> Tensor:
    """Noise for samples start .. start + shape[0] - 1 of a seeded stream.

    Sample i always gets the same noise for a given seed, whatever the batch size, so runs can
    be compared image by image from the same initial noise.
    """
    generator = torch.Generator().manual_seed(seed)
    per_sample = int(np.prod(shape[1:]))
    # Skip ahead by drawing and discarding: simple and exact for the sizes sampling uses.
    if start:
        torch.randn(start * per_sample, generator=generator)
    return torch.randn(shape[0] * per_sample, generator=generator).reshape(shape)


@torch.no_grad()
def generate(model: nn.Module, objective, labels: Tensor, data_shape: tuple[int, int, int], sample: SampleConfig,
             seed: int = 0, device: torch.device | str = "cpu", progress: bool = True,
             decode=None) -> Tensor:
    """Samples for ``labels`` (one per label) in model space ([-1, 1] pixels, or decoded latents).

    Sampling runs in batches of ``sample.batch_size``; noise of sample i depends only on (seed, i).
    ``decode`` maps latents to pixels (latent models).
    """
    from ccua.diffusion.sampling import sample_with_objective

    model.eval()
    null_label = model.null_label
    outputs = []
    batches = range(0, len(labels), sample.batch_size)
    torch.manual_seed(seed)  # stochastic samplers (ancestral, SDE, eta > 0) draw from the global generator
    for start in tqdm(batches, desc="sampling", disable=not progress or len(batches) == 1, leave=False):
        y = labels[start: start + sample.batch_size].to(device)
        noise = initial_noise((len(y), *data_shape), seed, start).to(device)

        def predict(x: Tensor, t: Tensor, y=y) -> Tensor:
            return guided_prediction(model, x, t, y, sample.guidance, null_label, sample.guidance_channels)

        x = sample_with_objective(objective, predict, noise, sample.sampler, steps=sample.steps, eta=sample.eta,
                                  atol=sample.atol, rtol=sample.rtol, progress=progress and len(batches) == 1,
                                  clip_x0=sample.clip_x0, ddpm_variance=sample.ddpm_variance)
        outputs.append(decode(x) if decode is not None else x)
    return torch.cat(outputs).cpu()


def vae_decoder(vae_name_or_path: str, device: torch.device | str = "cpu"):
    """A function from latents to pixels in [-1, 1] through the AutoencoderKL ``vae_name_or_path``."""
    from ccua.latent import decode_latents, load_vae

    vae = load_vae(vae_name_or_path).to(device)
    return lambda latents: decode_latents(vae, latents)


def classes_head_to_tail(class_counts: list[int]) -> list[int]:
    """Class indices ordered by training count, most images first (ties by index)."""
    return sorted(range(len(class_counts)), key=lambda c: (-class_counts[c], c))


def grid_labels(class_counts: list[int], per_class: int) -> Tensor:
    """Labels for a grid with one row per class ordered head to tail (most training images first)."""
    return torch.tensor([c for c in classes_head_to_tail(class_counts) for _ in range(per_class)],
                        dtype=torch.long)


# --------------------------------------------------------------------------- runs and checkpoints

def resolve_checkpoint(run_or_checkpoint: str | Path) -> Path:
    """A checkpoint file, or the newest checkpoint of a run folder."""
    path = Path(run_or_checkpoint)
    if path.is_file():
        return path
    if path.is_dir():
        found = list_checkpoints(path / "checkpoints") or list_checkpoints(path)
        if found:
            return found[-1]
        raise FileNotFoundError(f"no checkpoint in run folder {path}")
    raise FileNotFoundError(f"{path} is neither a run folder nor a checkpoint file")


class LoadedModel:
    """A model restored from a checkpoint, with what is needed to sample from it."""

    def __init__(self, run_or_checkpoint: str | Path, use_ema: bool = True, device: str | torch.device = "cpu"):
        self.checkpoint_path = resolve_checkpoint(run_or_checkpoint)
        state = load_checkpoint(self.checkpoint_path)
        self.config: Config = config_from_dict(state["config"])
        self.step: int = int(state["step"])
        self.class_counts: list[int] = [int(c) for c in state["class_counts"]]
        self.data_shape: tuple[int, int, int] = tuple(int(v) for v in state["data_shape"])
        self.use_ema = use_ema and state.get("ema") is not None
        self.device = torch.device(device)
        model = build_model(self.config.model, self.data_shape[0], len(self.class_counts), self.data_shape[1])
        model.load_state_dict(state["ema"] if self.use_ema else state["model"])
        self.model = model.to(self.device).eval()
        self.objective = build_objective(self.config.diffusion)
        self.latent = self.config.data.name == "latents"
        if self.latent and hasattr(self.objective, "clip"):
            self.objective.clip = False

    @property
    def run_dir(self) -> Path:
        parent = self.checkpoint_path.parent
        return parent.parent if parent.name == "checkpoints" else parent

    def decoder(self):
        """Latent models: a function from latents to pixels through the configured VAE."""
        return vae_decoder(self.config.data.vae, self.device) if self.latent else None

    def sample(self, labels: Tensor, sample: SampleConfig, seed: int = 0, progress: bool = True) -> Tensor:
        """Images in [-1, 1] for ``labels``."""
        return generate(self.model, self.objective, labels, self.data_shape, sample, seed, self.device, progress,
                        decode=self.decoder())


def sample_to_folder(loaded: LoadedModel, out_dir: str | Path, sample: SampleConfig, labels: Tensor | None = None,
                     per_class: int = 10, seed: int = 0, write_pngs: bool = True, progress: bool = True) -> Path:
    """Sample and write ``images.npz`` (uint8 NHWC + labels), PNGs, a per-class grid and sample_info.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    num_classes = len(loaded.class_counts)
    if labels is None:
        labels = torch.arange(num_classes).repeat_interleave(per_class)
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes - 1}]")
    images = to_uint8(loaded.sample(labels, sample, seed, progress)).numpy()
    np.savez_compressed(out / "images.npz", images=images, labels=labels.numpy())
    if write_pngs:
        png_dir = out / "png"
        png_dir.mkdir(exist_ok=True)
        from PIL import Image

        for i, (image, label) in enumerate(zip(images, labels.tolist())):
            Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(png_dir / f"{i:06d}_c{label}.png")
    order = grid_labels(loaded.class_counts, 1)
    rows = [images[labels.numpy() == c][:10] for c in order.tolist()]
    rows = [r for r in rows if len(r)]
    if rows:
        save_grid(rows, out / "grid.png")
    info = {
        "checkpoint": str(loaded.checkpoint_path), "step": loaded.step, "ema": loaded.use_ema,
        "seed": seed, "num_samples": int(len(labels)),
        "samples_per_class": np.bincount(labels.numpy(), minlength=num_classes).tolist(),
        "train_class_counts": loaded.class_counts, "data": asdict(loaded.config.data),
        **{f"sample_{k}": v for k, v in asdict(sample).items()},
    }
    (out / "sample_info.json").write_text(json.dumps(info, indent=2))
    log.info("wrote %d samples to %s", len(labels), out)
    return out
