"""Generating sample sets: a trained model loaded from its checkpoint, samples drawn with its
objective's sampler, and written out (PNGs, the .npz of DiT/ADM's evaluation suite, grids, provenance).

A sample set is drawn in chunks of ``sample.batch_size`` consecutive samples. Sample i's initial
noise depends only on (seed, i); the per-step noise of the stochastic samplers (DDPM ancestral,
DDIM with eta > 0, SDE) only on (seed, chunk). Under several processes chunk c is drawn by
process c mod world size and the chunks travel to process 0, which writes one sample set: the
images are those of one process, bit for bit, for every sampler.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ccua.build import build_model, build_objective, check_config, stored_config
from ccua.checkpoint import check_weights, checked_header, load_checkpoint
from ccua.config import Config, SampleConfig, as_dict, sampler_settings, with_changes
from ccua.distributed import DistInfo, on_main, own_items, shared_map
from ccua.exported import WEIGHTS_FILE, is_export, read_export, write_export
from ccua.files import atomic_file, write_text_atomic
from ccua.data import classes_head_to_tail, is_latent, to_uint8
from ccua.data.sources import open_npz
from ccua.diffusion import guided_prediction
from ccua.images import pil_image, save_grid
from ccua.progress import progress_bar
from ccua.records import sample_tag
from ccua.runs import resolve_checkpoint, run_folder_of

log = logging.getLogger(__name__)


class NonFiniteSamples(ValueError):
    """The sampler produced NaN or infinite values (broken weights, or settings that overflow)."""


def initial_noise(shape: tuple[int, ...], seed: int, start: int = 0) -> Tensor:
    """Noise for samples start .. start + shape[0] - 1 of a seeded stream.

    Sample i's noise comes from its own generator keyed by (seed, i) (numpy's PCG64 through a
    SeedSequence, so nearby keys give independent streams), so it is the same whatever the batch
    size or start, and the cost is linear in the samples drawn, not in ``start``. (torch's CPU
    generator keeps only 32 bits of a seed: keys built from (seed, i) would collide.)
    """
    per_sample = shape[1:]
    key = seed % 2**64  # SeedSequence takes non-negative integers; negative seeds stay distinct
    noise = [np.random.Generator(np.random.PCG64([key, start + i])).standard_normal(per_sample, dtype=np.float32)
             for i in range(shape[0])]
    return torch.from_numpy(np.stack(noise) if noise else np.zeros(shape, dtype=np.float32))


def step_noise_generator(seed: int, chunk: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of a chunk's per-step sampler noise, keyed by (seed, chunk) through a
    SeedSequence (a stream unrelated to the initial noise's), on ``device``."""
    key = int(np.random.SeedSequence([seed % 2**64, chunk, 1]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator(device=device).manual_seed(key)


def chunk_count(num_samples: int, sample: SampleConfig) -> int:
    """How many chunks of ``sample.batch_size`` a set of ``num_samples`` is drawn in."""
    return -(-num_samples // sample.batch_size)


@torch.no_grad()
def generate_chunk(model: nn.Module, objective, labels: Tensor, data_shape: tuple[int, int, int],
                   sample: SampleConfig, seed: int, chunk: int, device: torch.device | str = "cpu",
                   progress: bool = False, decode=None) -> Tensor:
    """Samples ``chunk * batch_size`` .. of ``labels`` (one chunk), in model space, on ``device``."""
    model.eval()
    start = chunk * sample.batch_size
    y = labels[start: start + sample.batch_size].to(device)
    noise = initial_noise((len(y), *data_shape), seed, start).to(device)

    def predict(x: Tensor, t: Tensor) -> Tensor:
        return guided_prediction(model, x, t, y, sample.guidance, model.null_label, sample.guidance_channels)

    x = objective.sample(predict, noise, sample, progress=progress,
                         generator=step_noise_generator(seed, chunk, noise.device))
    x = decode(x) if decode is not None else x
    if not torch.isfinite(x).all():  # written out they would be black images, silently
        raise NonFiniteSamples(f"samples {start}-{start + len(y) - 1} came out NaN or infinite (guidance "
                               f"{sample.guidance:g}, {sample.sampler} {sample.steps} steps); nothing was written")
    return x


@torch.no_grad()
def generate(model: nn.Module, objective, labels: Tensor, data_shape: tuple[int, int, int], sample: SampleConfig,
             seed: int = 0, device: torch.device | str = "cpu", progress: bool = True,
             decode=None) -> Tensor:
    """Samples for ``labels`` (one per label) in model space ([-1, 1] pixels, or decoded latents),
    in this process, chunk by chunk (see the module's docstring). ``decode`` maps latents to
    pixels (latent models)."""
    chunks = chunk_count(len(labels), sample)
    outputs = [generate_chunk(model, objective, labels, data_shape, sample, seed, chunk, device,
                              progress and chunks == 1, decode).cpu()
               for chunk in progress_bar(range(chunks), desc="sampling", disable=not progress or chunks == 1,
                                         leave=False)]
    return torch.cat(outputs)


def generate_uint8(model: nn.Module, objective, labels: Tensor, data_shape: tuple[int, int, int],
                   sample: SampleConfig, seed: int = 0, dist: DistInfo | None = None, progress: bool = True,
                   decode=None, each=None) -> np.ndarray | None:
    """uint8 [N, H, W, C] images for ``labels``, the chunks shared by the processes of ``dist``.

    Process 0 returns every image, in order; the others None. ``each(start, images)`` is called
    where a chunk was drawn, with the index of its first sample (to write its PNGs there).
    """
    dist = dist or DistInfo(device=next(model.parameters()).device)
    chunks = chunk_count(len(labels), sample)
    bar = progress_bar(total=len(own_items(chunks, dist)), desc="sampling", disable=not (progress and dist.is_main),
                       leave=False)

    def draw(chunk: int) -> np.ndarray:
        images = to_uint8(generate_chunk(model, objective, labels, data_shape, sample, seed, chunk, dist.device,
                                         decode=decode).cpu()).numpy()
        if each is not None:
            each(chunk * sample.batch_size, images)
        bar.update(1)
        return images

    try:
        parts = shared_map(draw, chunks, dist)
    finally:
        bar.close()
    return None if parts is None else np.concatenate(parts)


def vae_decoder(vae_name_or_path: str, device: torch.device | str = "cpu"):
    """A function from latents to pixels in [-1, 1] through the AutoencoderKL ``vae_name_or_path``."""
    from ccua.latent import decode_latents, load_vae

    vae = load_vae(vae_name_or_path).to(device)
    return lambda latents: decode_latents(vae, latents)


def grid_labels(class_counts: list[int], per_class: int) -> Tensor:
    """Labels for a grid with one row per class ordered head to tail (most training images first)."""
    return torch.tensor([c for c in classes_head_to_tail(class_counts) for _ in range(per_class)],
                        dtype=torch.long)


# --------------------------------------------------------------------------- trained models

class LoadedModel:
    """A model restored from a checkpoint, with what is needed to sample from it."""

    def __init__(self, run_or_checkpoint: str | Path, use_ema: bool = True, device: str | torch.device = "cpu"):
        if is_export(run_or_checkpoint):  # a safetensors export: its weights are the ones it was made with
            self.checkpoint_path = Path(run_or_checkpoint) / WEIGHTS_FILE
            weights, state = read_export(run_or_checkpoint)
            state = {**state, "model": weights, "ema": None}
            use_ema = False
        else:
            self.checkpoint_path = resolve_checkpoint(run_or_checkpoint)
            state = load_checkpoint(self.checkpoint_path)
        self.config: Config = stored_config(state["config"])
        self.step, self.class_counts, self.data_shape = checked_header(state, self.checkpoint_path)
        self.use_ema = use_ema and state.get("ema") is not None
        self.device = torch.device(device)
        model = build_model(self.config.model, self.data_shape[0], len(self.class_counts), self.data_shape[1])
        key = "ema" if self.use_ema else "model"
        model.load_state_dict(check_weights(state[key], model, self.checkpoint_path, key))
        self.model = model.to(self.device).eval()
        self.objective = build_objective(self.config.diffusion)
        self.latent = is_latent(self.config.data)

    @property
    def run_dir(self) -> Path:
        return run_folder_of(self.checkpoint_path)

    def export(self, folder: str | Path) -> Path:
        """Write the weights this model was loaded with (EMA by default) and its config as a
        safetensors export (:mod:`ccua.exported`)."""
        meta = {"config": self.config.to_dict(), "step": self.step, "class_counts": self.class_counts,
                "data_shape": list(self.data_shape), "ema": self.use_ema, "source": str(self.checkpoint_path)}
        return write_export(folder, self.model.state_dict(), meta)

    def decoder(self):
        """Latent models: a function from latents to pixels through the configured VAE."""
        return vae_decoder(self.config.data.vae, self.device) if self.latent else None

    def sample_settings(self, changes: dict | None = None) -> SampleConfig:
        """The run's sampler settings with ``changes`` applied (and the weights loaded, EMA or not),
        checked: ranges, and the sampler fits the objective. ConfigError otherwise."""
        sample = with_changes(self.config.sample, {**(changes or {}), "use_ema": self.use_ema})
        check_config(dataclasses.replace(self.config, sample=sample))
        return sample

    def sample(self, labels: Tensor, sample: SampleConfig, seed: int = 0, progress: bool = True) -> Tensor:
        """Images in [-1, 1] for ``labels``."""
        with self._naming_the_checkpoint():
            return generate(self.model, self.objective, labels, self.data_shape, sample, seed, self.device, progress,
                            decode=self.decoder())

    @contextlib.contextmanager
    def _naming_the_checkpoint(self):
        try:
            yield
        except NonFiniteSamples as error:
            raise NonFiniteSamples(f"sampling {self.checkpoint_path}: {error}") from None

    def sample_uint8(self, labels: Tensor, sample: SampleConfig, seed: int = 0, progress: bool = True,
                     dist: DistInfo | None = None, each=None) -> np.ndarray | None:
        """uint8 [N, H, W, C] images for ``labels``, shared by the processes of ``dist``
        (:func:`generate_uint8`: process 0 gets them all, the others None)."""
        dist = dist or DistInfo(device=self.device)
        with self._naming_the_checkpoint():
            return generate_uint8(self.model, self.objective, labels, self.data_shape, sample, seed, dist, progress,
                                  self.decoder(), each)


# --------------------------------------------------------------------------- sample files

SAMPLE_FILE = "images.npz"
# What a sampling run writes into its folder (and --overwrite removes); "eval" holds the metrics
# of the samples it replaces.
SAMPLE_OUTPUTS = (SAMPLE_FILE, "png", "grid.png", "sample_info.json", "eval")
# Array names: DiT/ADM's evaluation suite reads arr_0 (uint8 NHWC images) and arr_1 (labels);
# files that name them images/labels are read too.
IMAGE_KEYS = ("arr_0", "images")
LABEL_KEYS = ("arr_1", "labels")


def save_samples(path: str | Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """Write uint8 NHWC ``images`` as ``arr_0`` and their ``labels`` as ``arr_1`` (the ADM/DiT layout),
    whole or not at all (:func:`ccua.files.atomic_file`)."""
    path = Path(path)
    with atomic_file(path) as stream:
        np.savez_compressed(stream, arr_0=np.asarray(images, dtype=np.uint8), arr_1=np.asarray(labels, dtype=np.int64))
    return path


def _first_key(data, keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if k in data.files), None)


def load_sample_file(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 images and int64 labels (None if the file has none) of a sample ``.npz``.

    Images are ``arr_0`` or ``images`` (uint8, [N, H, W, C] or grey [N, H, W]); labels ``arr_1``
    or ``labels`` (integers, one per image). Anything else is a ValueError naming the file.
    """
    path = Path(path)
    with open_npz(path, "arr_0 (uint8 images, NHWC) and arr_1 (labels)") as data:
        image_key, label_key = _first_key(data, IMAGE_KEYS), _first_key(data, LABEL_KEYS)
        if image_key is None:
            raise ValueError(f"{path} has no image array: expected arr_0 (as DiT/ADM write it) or images; it holds "
                             f"{', '.join(data.files) or 'nothing'}")
        try:
            images = data[image_key]
            labels = data[label_key] if label_key else None
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
            raise ValueError(f"{path}: cannot read its arrays ({error})") from None
    return _checked_images(path, image_key, images), _checked_labels(path, label_key, labels, len(images))


def _checked_images(path: Path, key: str, images: np.ndarray) -> np.ndarray:
    if images.dtype != np.uint8:
        raise ValueError(f"{path}: {key} is {images.dtype}, expected uint8 pixels 0..255: convert the images "
                         "first (from [-1, 1]: ((x + 1) * 127.5).round().clip(0, 255).astype(np.uint8))")
    if images.ndim not in (3, 4) or len(images) == 0:
        raise ValueError(f"{path}: {key} has shape {images.shape}, expected [N, H, W, C] or grey [N, H, W]")
    return images


def _checked_labels(path: Path, key: str | None, labels: np.ndarray | None, n: int) -> np.ndarray | None:
    if labels is None:
        return None
    if labels.ndim != 1 or len(labels) != n:
        raise ValueError(f"{path}: {key} has shape {labels.shape}, expected one label per image ({n})")
    if labels.dtype.kind in "iu":
        return labels.astype(np.int64)
    if labels.dtype.kind == "f":
        bad = labels[~(np.isfinite(labels) & (labels == np.round(labels)))]
        if not len(bad):  # 3.0 is class 3
            return labels.astype(np.int64)
        raise ValueError(f"{path}: {key} must hold integer class indices, got {labels.dtype} values such as "
                         f"{bad[0]:g}")
    raise ValueError(f"{path}: {key} must hold integer class indices, got {labels.dtype}")


def prepare_output_folder(out: Path, overwrite: bool = False) -> None:
    """Refuse a non-empty output folder unless ``overwrite``, which first removes what an earlier
    sampling run wrote there (stale PNGs beside new ones would be mixed up with them)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder {out} is a file")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"output folder {out} is not empty: choose another --out, or pass --overwrite to "
                             "replace the samples in it")
        remove_sample_outputs(out)
    out.mkdir(parents=True, exist_ok=True)


def remove_sample_outputs(out: Path) -> None:
    """Remove what a sampling run writes into ``out`` (:data:`SAMPLE_OUTPUTS`), nothing else."""
    for name in SAMPLE_OUTPUTS:
        old = out / name
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        elif old.exists() or old.is_symlink():
            old.unlink(missing_ok=True)


def sample_to_folder(loaded: LoadedModel, out_dir: str | Path, sample: SampleConfig, labels: Tensor | None = None,
                     per_class: int = 10, seed: int = 0, write_pngs: bool = True, progress: bool = True,
                     overwrite: bool = False, dist: DistInfo | None = None,
                     request: dict | None = None) -> Path:
    """Sample and write ``images.npz`` (arr_0: uint8 NHWC, arr_1: labels), PNGs, a per-class grid and
    sample_info.json (with ``request``, the evaluation's sample request, when given). A non-empty
    ``out_dir`` is refused unless ``overwrite``.

    Under several processes (``dist``) each draws its chunks and writes their PNGs; process 0
    gathers the images and writes the rest (one sample set).
    """
    out = Path(out_dir)
    num_classes = len(loaded.class_counts)
    if labels is None:
        labels = torch.arange(num_classes).repeat_interleave(per_class)
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes - 1}]")
    dist = dist or DistInfo(device=loaded.device)
    png_dir = out / "png"
    on_main(lambda: _prepare_sample_folder(out, png_dir if write_pngs else None, overwrite), dist)
    label_list = labels.tolist()

    def write_pngs_of(start: int, images: np.ndarray) -> None:
        for i, image in enumerate(images, start):
            pil_image(image).save(png_dir / f"{i:06d}_c{label_list[i]}.png")

    try:
        images = loaded.sample_uint8(labels, sample, seed, progress, dist, write_pngs_of if write_pngs else None)
        if images is None:  # not process 0: its chunks went there
            return out
        _write_sample_set(loaded, out, sample, labels, seed, images, request)
    except OSError as error:  # a full disk, say: no partial sample set is left behind
        on_main(lambda: remove_sample_outputs(out), dist)
        raise OSError(error.errno, f"cannot write the samples ({error.strerror or error}); the partial sample set "
                                   "was removed", str(error.filename or out)) from None
    log.info("wrote %d samples to %s", len(labels), out)
    return out


def sample_run(run: str | Path, out: str | Path | None = None, *, changes: dict | None = None,
               classes: list[int] | None = None, per_class: int = 10, seed: int = 0, use_ema: bool = True,
               write_pngs: bool = True, overwrite: bool = False, dist: DistInfo | None = None) -> Path:
    """Sample a run (its newest checkpoint), a checkpoint or an export with its own sampler settings,
    ``changes`` (e.g. ``{"guidance": 1.5, "steps": 50}``) applied and checked, ``per_class`` images
    of each of ``classes`` (default: every class). Written by :func:`sample_to_folder` into ``out``,
    by default the run's ``samples/<step, sampler, guidance, images per class, seed>``."""
    dist = dist or DistInfo()
    loaded = LoadedModel(run, use_ema=use_ema, device=dist.device)
    sample = loaded.sample_settings(changes)
    labels = None if classes is None else torch.tensor(classes, dtype=torch.long).repeat_interleave(per_class)
    if out is None:
        out = loaded.run_dir / "samples" / sample_tag(loaded.step, sampler_settings(sample), per_class, seed)
    return sample_to_folder(loaded, out, sample, labels=labels, per_class=per_class, seed=seed,
                            write_pngs=write_pngs, overwrite=overwrite, dist=dist)


def _write_sample_set(loaded: LoadedModel, out: Path, sample: SampleConfig, labels: Tensor, seed: int,
                      images: np.ndarray, request: dict | None) -> None:
    """images.npz, the per-class grid and sample_info.json of a drawn sample set (process 0)."""
    num_classes = len(loaded.class_counts)
    save_samples(out / SAMPLE_FILE, images, labels.numpy())
    order = grid_labels(loaded.class_counts, 1)
    rows = [images[labels.numpy() == c][:10] for c in order.tolist()]
    rows = [r for r in rows if len(r)]
    if rows:
        save_grid(rows, out / "grid.png")
    info = {
        "images_file": SAMPLE_FILE, "checkpoint": str(loaded.checkpoint_path), "step": loaded.step,
        "ema": loaded.use_ema, "seed": seed, "num_samples": int(len(labels)),
        "samples_per_class": np.bincount(labels.numpy(), minlength=num_classes).tolist(),
        "train_class_counts": loaded.class_counts, "data": as_dict(loaded.config.data),
        **{f"sample_{k}": v for k, v in sampler_settings(sample).items()},
    }
    if request is not None:
        info["request"] = request
    write_text_atomic(out / "sample_info.json", json.dumps(info, indent=2))


def _prepare_sample_folder(out: Path, png_dir: Path | None, overwrite: bool) -> None:
    prepare_output_folder(out, overwrite)
    if png_dir is not None:
        png_dir.mkdir(exist_ok=True)
