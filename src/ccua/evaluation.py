"""Evaluating a run or a folder of samples: sample if needed, then the metrics of ``ccua.metrics``.

Every number is written with what produced it: checkpoint and step, EMA, sampler and steps,
guidance, seed, samples per class, the reference set, the feature network and its weights hash.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ccua.config import DataConfig

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path(".cache/ccua")


def default_classifier_path(data: DataConfig, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """Where ``ccua features train`` puts the domain classifier of a data set and resolution."""
    return cache_dir / "classifiers" / f"{data.name}-{data.resolution}px.pt"


def feature_weights_path(features: str, path: str | None, data: DataConfig,
                         cache_dir: Path = DEFAULT_CACHE) -> str | None:
    """``path``, or for the classifier the file ``ccua features train`` writes (which must exist)."""
    if features != "classifier" or path is not None:
        return path
    path = str(default_classifier_path(data, cache_dir))
    if not Path(path).exists():
        raise FileNotFoundError(f"no domain classifier at {path}: train it with "
                                f"`ccua features train` for data.name={data.name} data.resolution={data.resolution}")
    return path


def _is_sample_folder(path: Path) -> bool:
    return path.suffix == ".npz" or (path.is_dir() and (path / "images.npz").exists())


def load_samples(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Images (uint8 NHWC), labels and sample_info.json of a sample folder or .npz file."""
    path = Path(path)
    npz = path if path.suffix == ".npz" else path / "images.npz"
    with np.load(npz) as data:
        if "labels" not in data:
            raise ValueError(f"{npz} has no 'labels' array: per-group and per-class metrics need the class "
                             "of every image (save it as labels=...)")
        images, labels = data["images"], data["labels"]
    info_path = npz.parent / "sample_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    return images, labels, info


def training_copies(images: np.ndarray, labels: np.ndarray, data: DataConfig, result: dict[str, Any]) -> dict | None:
    """Near-copies of the training images the model saw (the long-tailed subset of ``data``), per
    group of ``result``; None (with a warning in ``result``) when the images' shape differs."""
    from ccua.data import build_training_set
    from ccua.metrics.features import to_uint8_nchw
    from ccua.metrics.memorisation import memorisation

    train = build_training_set(data)
    train_images = np.stack([np.asarray(train.uint8_image(i)) for i in range(len(train))])
    generated = to_uint8_nchw(images).numpy()
    if generated.shape[1:] != train_images.shape[1:]:
        result["warnings"].append(f"near-copies not measured: generated images {generated.shape[1:]} and training "
                                  f"images {train_images.shape[1:]} differ in shape")
        return None
    groups = {name: row["classes"] for name, row in result["groups"].items()}
    return memorisation(generated, labels, train_images, train.labels, groups, hflip=data.hflip)


def evaluate_target(target: str | Path, out_dir: str | Path | None = None, *, features: str = "inception",
                    feature_path: str | None = None, reference_split: str = "train", per_class: int = 100,
                    sampler: str | None = None, steps: int | None = None, guidance: float | None = None,
                    seed: int = 0, use_ema: bool = True, group_mode: str = "thirds", per_class_metrics: bool = True,
                    bf16: bool = False, allow_download: bool = False, data: DataConfig | None = None,
                    cache_dir: str | Path = DEFAULT_CACHE, max_reference: int | None = None,
                    memorisation: bool = True, device: str | None = None) -> tuple[dict[str, Any], Path]:
    """Evaluate a run folder / checkpoint (sampling it first) or a sample folder / .npz.

    ``data``: the data set whose balanced ``reference_split`` is the reference (default: the one
    the run was trained on, read from the checkpoint or sample_info.json).
    ``memorisation``: also measure near-copies of the (long-tailed) training images per group.
    Returns the metrics and the folder holding metrics.json and metrics.md.
    """
    from ccua.metrics import Reference, build_feature_net, evaluate, write_metrics

    target = Path(target)
    cache_dir = Path(cache_dir)
    if _is_sample_folder(target):
        sample_dir = target if target.is_dir() else target.parent
        out = Path(out_dir) if out_dir else sample_dir / "eval"
    else:
        from ccua.sampling import LoadedModel, sample_to_folder

        loaded = LoadedModel(target, use_ema=use_ema, device=device or "cpu")
        sample = loaded.config.sample
        changes = {k: v for k, v in {"sampler": sampler, "steps": steps, "guidance": guidance}.items()
                   if v is not None}
        sample = replace(sample, **changes, use_ema=loaded.use_ema)
        tag = f"step{loaded.step:07d}_{sample.sampler}{sample.steps}_w{sample.guidance:g}_n{per_class}_seed{seed}"
        out = Path(out_dir) if out_dir else loaded.run_dir / "eval" / tag
        sample_dir = sample_to_folder(loaded, out / "samples", sample, per_class=per_class, seed=seed,
                                      write_pngs=False)
    images, labels, info = load_samples(sample_dir)
    if data is None:
        if "data" not in info:
            raise ValueError(f"{sample_dir} has no sample_info.json naming its data set: pass the data set "
                             "(--data PRESET or data.* overrides)")
        data = DataConfig(**info["data"])
    if data.name == "latents":
        raise ValueError("the run was trained on a latent cache: name the pixel data set for the reference "
                         "(--data PRESET or data.name=... overrides)")
    feature_path = feature_weights_path(features, feature_path, data, cache_dir)
    net = build_feature_net(features, path=feature_path, bf16=bf16, allow_download=allow_download, device=device)
    reference = Reference.from_config(data, reference_split)
    train_counts = info.get("train_class_counts")
    result = evaluate(images, labels, reference, train_counts, net, cache_dir=cache_dir / "features",
                      group_mode=group_mode, per_class=per_class_metrics, max_reference=max_reference, seed=seed)
    if memorisation:
        result["memorisation"] = training_copies(images, labels, data, result)
    provenance = {key: info.get(key) for key in ("checkpoint", "step", "ema", "seed", "num_samples",
                                                 "samples_per_class")}
    provenance.update({k: v for k, v in info.items() if k.startswith("sample_")})
    provenance.update({short: info.get(f"sample_{short}") for short in ("sampler", "steps", "eta", "guidance")})
    provenance.update(samples=str(sample_dir), reference_split=reference_split, train_class_counts=train_counts)
    write_metrics(result, out, provenance)
    log.info("metrics written to %s", out)
    return result, out
