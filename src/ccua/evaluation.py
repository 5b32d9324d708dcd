"""Evaluating a run or a folder of samples: sample if needed, then the metrics of ``ccua.metrics``.

Every number is written with what produced it: checkpoint and step, EMA, sampler and steps,
guidance, seed, samples per class, the reference set, the feature network and its weights hash.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ccua.build import check_config, stored_config
from ccua.config import DataConfig
from ccua.data import is_latent
from ccua.distributed import DistInfo, barrier
from ccua.metrics.weights import DEFAULT_CACHE, feature_weights_path

log = logging.getLogger(__name__)

def _sample_file(path: Path) -> Path | None:
    """The sample .npz a target names: the file itself, or a sample folder's images.npz."""
    from ccua.generate import SAMPLE_FILE

    if path.suffix.lower() == ".npz":
        return path
    if path.is_dir() and (path / SAMPLE_FILE).exists():
        return path / SAMPLE_FILE
    return None


def load_samples(path: str | Path) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Images (uint8), labels (None if the file has none) and provenance of exactly the .npz named,
    or of a sample folder's images.npz.

    The provenance is the folder's sample_info.json when it describes this file (it names the
    file it was written with), else empty.
    """
    from ccua.generate import SAMPLE_FILE, load_sample_file

    path = Path(path)
    npz = _sample_file(path) or path / SAMPLE_FILE
    images, labels = load_sample_file(npz)
    info_path = npz.parent / "sample_info.json"
    info: dict[str, Any] = {}
    if info_path.exists():
        try:
            info = json.loads(info_path.read_text())
        except ValueError as error:
            raise ValueError(f"{info_path} is not valid JSON ({error}): delete or repair it") from None
        if info.get("images_file", SAMPLE_FILE) != npz.name:
            info = {}  # it describes another file of this folder
    return images, labels, info


def _training_counts(info: dict[str, Any], data: DataConfig) -> tuple[list[int] | None, str | None]:
    """The training images per class, and where they come from: the samples' provenance, else the
    long-tail profile of the data config (what a run of that config trains on)."""
    from ccua.data import training_class_counts

    if info.get("train_class_counts") is not None:
        return [int(c) for c in info["train_class_counts"]], "sample_info.json (the checkpoint's training set)"
    counts = training_class_counts(data)
    log.info("training class counts taken from the data config (%s): no sample_info.json beside the samples",
             data.name)
    return counts, f"data config ({data.name}, imbalance {data.imbalance}): no sample_info.json beside the samples"


def _sample_run(target: Path, out_dir: str | Path | None, per_class: int, seed: int, use_ema: bool,
                dist: DistInfo, overrides: dict[str, Any]) -> tuple[Path, Path]:
    """Sample a run folder or checkpoint into ``out/samples`` (shared by the processes of
    ``dist``); returns (the .npz, out) once the file is written."""
    from ccua.generate import SAMPLE_FILE, LoadedModel, sample_to_folder

    loaded = LoadedModel(target, use_ema=use_ema, device=dist.device)
    changes = {k: v for k, v in overrides.items() if v is not None}
    sample = replace(loaded.config.sample, **changes, use_ema=loaded.use_ema)
    check_config(replace(loaded.config, sample=sample))  # the sampler fits the objective, before any file is written
    tag = f"step{loaded.step:07d}_{sample.sampler}{sample.steps}_w{sample.guidance:g}_n{per_class}_seed{seed}"
    out = Path(out_dir) if out_dir else loaded.run_dir / "eval" / tag
    # This folder belongs to the evaluation: new samples replace the ones of an earlier evaluation.
    sample_dir = sample_to_folder(loaded, out / "samples", sample, per_class=per_class, seed=seed, write_pngs=False,
                                  overwrite=True, dist=dist)
    barrier(dist)  # every process reads the sample file that process 0 has just written
    return sample_dir / SAMPLE_FILE, out


@dataclass
class _Options:
    """How to evaluate: the feature network and the reference (what evaluate_target was asked)."""

    features: str
    feature_path: str | None
    bf16: bool
    allow_download: bool
    dist: DistInfo
    cache_dir: Path
    reference_split: str
    group_mode: str
    per_class_metrics: bool
    max_reference: int | None
    seed: int
    memorisation: bool = True

    def feature_net(self, data: DataConfig | None):
        from ccua.metrics import build_feature_net

        path = self.feature_path
        if data is not None:
            path = feature_weights_path(self.features, path, data, self.cache_dir)
        elif self.features == "classifier" and path is None:
            raise ValueError("--features classifier needs --feature-path (or the data set) to find its weights")
        return build_feature_net(self.features, path=path, bf16=self.bf16, allow_download=self.allow_download,
                                 device=self.dist.device, progress=self.dist.is_main)


def evaluate_target(target: str | Path, out_dir: str | Path | None = None, *, features: str = "inception",
                    feature_path: str | None = None, reference_split: str = "train", per_class: int = 100,
                    sampler: str | None = None, steps: int | None = None, guidance: float | None = None,
                    seed: int = 0, use_ema: bool = True, group_mode: str = "thirds", per_class_metrics: bool = True,
                    bf16: bool = False, allow_download: bool = False, data: DataConfig | None = None,
                    cache_dir: str | Path = DEFAULT_CACHE, max_reference: int | None = None,
                    device: str | None = None, reference_stats: str | Path | None = None,
                    memorisation: bool = True, dist: DistInfo | None = None) -> tuple[dict[str, Any] | None, Path]:
    """Evaluate a run folder / checkpoint (sampling it first), a sample folder, or exactly the .npz named.

    ``data``: the data set whose balanced ``reference_split`` is the reference (default: the one
    the run was trained on, read from the checkpoint or sample_info.json).
    ``reference_stats``: a published statistics file (``mu``, ``sigma``) as the FID reference
    instead; then only the overall FID (and IS) can be computed.
    ``memorisation``: also measure near-copies of the (long-tailed) training images per group.
    ``dist``: the processes of a torchrun or srun launch (every one calls this with the same
    arguments): they share sampling and feature extraction, and process 0 scores and writes
    the files (a file system all of them see is assumed).
    Returns the metrics (None on the processes other than 0) and the folder holding metrics.json
    and metrics.md.
    """
    from ccua.devices import default_device
    from ccua.report import write_metrics

    dist = dist or DistInfo(device=default_device(device))
    options = _Options(features, feature_path, bf16, allow_download, dist, Path(cache_dir), reference_split,
                       group_mode, per_class_metrics, max_reference, seed, memorisation)
    target = Path(target)
    npz = _sample_file(target)
    if npz is not None:
        from ccua.generate import SAMPLE_FILE

        # Each sample file gets its own metrics folder, so two files of one folder never share one.
        out = Path(out_dir) if out_dir else npz.parent / ("eval" if npz.name == SAMPLE_FILE else f"eval_{npz.stem}")
    else:
        npz, out = _sample_run(target, out_dir, per_class, seed, use_ema, dist,
                               {"sampler": sampler, "steps": steps, "guidance": guidance})
    images, labels, info = load_samples(npz)
    if data is None and "data" in info:
        data = stored_config({"data": info["data"]}).data  # validated: a stale key is one clear error
    if reference_stats is not None:
        from ccua.metrics import evaluate_against_stats, load_reference_stats

        stats = load_reference_stats(reference_stats)
        result = evaluate_against_stats(images, labels, stats, options.feature_net(data),
                                        stats_name=str(reference_stats), dist=dist)
    else:
        result = _evaluate_against_data(images, labels, info, npz, data, options)
    if result is None:  # not process 0
        return None, out
    write_metrics(result, out, _provenance(info, npz, reference_split, reference_stats, result))
    log.info("metrics written to %s", out)
    return result, out


def _evaluate_against_data(images: np.ndarray, labels: np.ndarray | None, info: dict[str, Any], npz: Path,
                           data: DataConfig | None, options: _Options) -> dict[str, Any] | None:
    """The full evaluation against the reference images of ``data``, per group and class
    (None on the processes other than 0)."""
    from ccua.metrics import Reference, evaluate

    if labels is None:
        raise ValueError(f"{npz} has no labels (arr_1 or labels): per-group and per-class metrics need the class "
                         "of every image; save them as arr_1, or give --reference-stats for the overall FID only")
    if data is None:
        raise ValueError(f"{npz} has no sample_info.json naming its data set: pass the data set "
                         "(--data PRESET or data.* overrides)")
    if is_latent(data):
        raise ValueError("the run was trained on a latent cache: name the pixel data set for the reference "
                         "(--data PRESET or data.name=... overrides)")
    net = options.feature_net(data)
    reference = Reference.from_config(data, options.reference_split)
    train_counts, counts_source = _training_counts(info, data)
    result = evaluate(images, labels, reference, train_counts, net, cache_dir=options.cache_dir / "features",
                      group_mode=options.group_mode, per_class=options.per_class_metrics,
                      max_reference=options.max_reference, seed=options.seed, dist=options.dist)
    if result is None:
        return None
    result["train_class_counts_source"] = counts_source
    if options.memorisation:
        result["memorisation"] = training_copies(images, labels, data, result)
    return result


def training_copies(images: np.ndarray, labels: np.ndarray, data: DataConfig, result: dict[str, Any]) -> dict | None:
    """Near-copies of the training images the model saw (the long-tailed subset of ``data``), per
    group of ``result``; None (with a warning in ``result``) when the images' shape differs."""
    from ccua.data import build_training_set
    from ccua.images import to_uint8_nchw
    from ccua.metrics.memorisation import memorisation

    train = build_training_set(data)
    train_images = np.stack([np.asarray(train.uint8_image(i)) for i in range(len(train))])
    generated = to_uint8_nchw(images).numpy()
    if generated.shape[1:] != train_images.shape[1:]:
        result["warnings"].append(f"near-copies not measured: generated images {generated.shape[1:]} and training "
                                  f"images {train_images.shape[1:]} differ in shape")
        return None
    groups = {name: row["classes"] for name, row in result["groups"].items()}
    return memorisation(generated, labels, train_images, train.labels, groups)


def _provenance(info: dict[str, Any], npz: Path, reference_split: str, reference_stats, result) -> dict[str, Any]:
    provenance = {key: info.get(key) for key in ("checkpoint", "step", "ema", "seed", "num_samples",
                                                 "samples_per_class")}
    provenance.update({k: v for k, v in info.items() if k.startswith("sample_")})
    provenance.update({short: info.get(f"sample_{short}") for short in ("sampler", "steps", "eta", "guidance")})
    provenance.update(samples=str(npz), train_class_counts=result.get("train_class_counts"),
                      train_class_counts_source=result.get("train_class_counts_source"),
                      reference_split=None if reference_stats is not None else reference_split,
                      reference_stats=None if reference_stats is None else str(reference_stats))
    return provenance
