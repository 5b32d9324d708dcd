"""Evaluating a run or a folder of samples: sample if needed, then the metrics of ``ccua.metrics``.

Every number is written with what produced it: checkpoint and step, EMA, sampler and steps,
guidance, seed, samples per class, the reference set, the feature network and its weights hash.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ccua.build import load_checked_config, stored_config
from ccua.config import Config, DataConfig, apply_overrides, as_dict
from ccua.data import is_latent
from ccua.distributed import DistInfo, barrier
from ccua.metrics.weights import DEFAULT_CACHE, feature_weights_path, file_sha256
from ccua.records import EvaluationRecord, SampleFile, SampleRequest, Scoring, differing_keys
from ccua.report import write_metrics

log = logging.getLogger(__name__)

def _sample_file(path: Path) -> Path | None:
    """The sample .npz a source names: the file itself, or a sample folder's images.npz."""
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


def source_config(source: str | Path) -> Config:
    """The settings of what ``ccua evaluate`` or ``ccua sample`` is given: a run's or checkpoint's
    stored config, or, for a sample file, a config holding the data set its sample_info.json names."""
    from ccua.checkpoint import load_checkpoint
    from ccua.runs import resolve_checkpoint

    source = Path(source)
    npz = _sample_file(source)
    if npz is None:
        return stored_config(load_checkpoint(resolve_checkpoint(source))["config"])
    _, _, info = load_samples(npz)
    if "data" not in info:
        return Config()  # a file from elsewhere: the data.* overrides name its data set
    return stored_config({"data": info["data"]})


def evaluation_data(source: str | Path, data: str | None = None,
                    overrides: list[str] | None = None) -> DataConfig | None:
    """The reference data set of an evaluation: the preset or YAML ``data``'s (with the ``data.*``
    ``overrides``), else the source's own with them; None for the source's own unchanged (read
    where it is evaluated)."""
    overrides = overrides or []
    if data:
        return load_checked_config(data, overrides).data
    if not overrides:
        return None
    return apply_overrides(source_config(source), overrides).data


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


def _sample_into(loaded, out: Path, sample, per_class: int, seed: int, request: SampleRequest,
                 dist: DistInfo) -> Path:
    """Sample ``loaded`` into ``out/samples`` (shared by the processes of ``dist``); returns the
    .npz once process 0 has written it."""
    from ccua.generate import SAMPLE_FILE, sample_to_folder

    # This folder belongs to the evaluation: new samples replace the ones of an earlier evaluation.
    sample_dir = sample_to_folder(loaded, out / "samples", sample, per_class=per_class, seed=seed, write_pngs=False,
                                  overwrite=True, dist=dist, request=asdict(request))
    barrier(dist)  # every process reads the sample file that process 0 has just written
    return sample_dir / SAMPLE_FILE


@dataclass
class _Options:
    """How to evaluate: the feature network and the reference (what evaluate_source was asked)."""

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


class _Scorer:
    """Everything the scoring needs, made before any image is sampled: the feature network (its
    weights found and read) and its part of the record; then (:meth:`prepare`, once no stored
    evaluation can be reused) the reference (its data found) or published statistics, and the
    training images of the near-copy test. A missing piece fails before sampling, so a failed
    evaluation never leaves new samples beside old numbers."""

    def __init__(self, options: _Options, data: DataConfig | None, reference_stats: str | Path | None):
        from ccua.metrics import build_feature_net, load_reference_stats
        from ccua.metrics.memorisation import CopyTest

        self.options, self.data = options, data
        if reference_stats is None:
            _check_reference_data(data)
        path = options.feature_path
        if data is not None:
            path = feature_weights_path(options.features, path, data, options.cache_dir)
        elif options.features == "classifier" and path is None:
            raise ValueError("--features classifier needs --feature-path (or the data set) to find its weights")
        self.net = build_feature_net(options.features, path=path, bf16=options.bf16,
                                     allow_download=options.allow_download, device=options.dist.device,
                                     progress=options.dist.is_main)
        self.stats_path = None if reference_stats is None else Path(reference_stats)
        self.stats = None if reference_stats is None else load_reference_stats(reference_stats)
        self.reference = self.training_set = None
        self.copy_test = CopyTest() if reference_stats is None and options.memorisation else None
        self.scoring = Scoring(
            features=self.net.name, weights_hash=self.net.weights_hash, feature_config=self.net.config_tag(),
            bf16=options.bf16,
            reference=options.reference_split if self.stats is None else f"stats:{self.stats_path.name}",
            data=_data_identity(data), max_reference=options.max_reference, subset_seed=options.seed,
            group_mode=options.group_mode, per_class_metrics=options.per_class_metrics,
            copy_test=None if self.copy_test is None else asdict(self.copy_test),
            reference_stats_sha256=None if self.stats_path is None else file_sha256(self.stats_path))

    def prepare(self) -> None:
        """Read the reference and the training images (their data found, or a clear error)."""
        from ccua.data import build_training_set
        from ccua.metrics import Reference

        if self.stats is None:
            self.reference = Reference.from_config(self.data, self.options.reference_split)
        if self.copy_test is not None:
            self.training_set = build_training_set(self.data)

    def score(self, images: np.ndarray, labels: np.ndarray | None, info: dict[str, Any],
              npz: Path) -> dict[str, Any] | None:
        """The numbers (None on the processes other than 0)."""
        from ccua.metrics import evaluate, evaluate_against_stats

        if self.stats is not None:
            return evaluate_against_stats(images, labels, self.stats, self.net, stats_name=str(self.stats_path),
                                          dist=self.options.dist)
        options = self.options
        train_counts, counts_source = _training_counts(info, self.data)
        result = evaluate(images, labels, self.reference, train_counts, self.net,
                          cache_dir=options.cache_dir / "features", group_mode=options.group_mode,
                          per_class=options.per_class_metrics, max_reference=options.max_reference, seed=options.seed,
                          dist=options.dist)
        if result is None:
            return None
        result["train_class_counts_source"] = counts_source
        if self.training_set is not None:
            result["memorisation"] = training_copies(images, labels, self.training_set, result, self.copy_test)
        return result


def _check_reference_data(data: DataConfig | None) -> None:
    if data is None:
        raise ValueError("the samples have no sample_info.json naming their data set: pass the data set "
                         "(--data PRESET or data.* overrides)")
    if is_latent(data):
        raise ValueError("the run was trained on a latent cache: name the pixel data set for the reference "
                         "(--data PRESET or data.name=... overrides)")


def _data_identity(data: DataConfig | None) -> dict[str, Any] | None:
    """The data settings that choose the reference and training images (not where they are read):
    the long-tail profile, and the source's own section (an image folder's split files)."""
    if data is None:
        return None
    identity = {key: getattr(data, key) for key in ("name", "resolution", "channels", "imbalance", "n_max",
                                                    "longtail_seed")}
    own = data.chosen_settings()
    return {**identity, "source": as_dict(own) if own is not None else None}


def evaluate_source(source: str | Path, out_dir: str | Path | None = None, *, features: str = "inception",
                    feature_path: str | None = None, reference_split: str = "train", per_class: int = 100,
                    sampler: str | None = None, steps: int | None = None, guidance: float | None = None,
                    sample_changes: dict[str, Any] | None = None,
                    seed: int = 0, use_ema: bool = True, group_mode: str = "thirds", per_class_metrics: bool = True,
                    bf16: bool = False, allow_download: bool = False, data: DataConfig | None = None,
                    cache_dir: str | Path = DEFAULT_CACHE, max_reference: int | None = None,
                    device: str | None = None, reference_stats: str | Path | None = None,
                    memorisation: bool = True, dist: DistInfo | None = None, eval_root: str | Path | None = None,
                    reuse: bool = False) -> tuple[dict[str, Any] | None, Path]:
    """Evaluate a run folder / checkpoint (sampling it first), a sample folder, or exactly the .npz named.

    ``data``: the data set whose balanced ``reference_split`` is the reference (default: the one
    the run was trained on, read from the checkpoint or sample_info.json).
    ``sampler``, ``steps``, ``guidance``, ``sample_changes``: sampler settings that replace the
    run's (``sample_changes`` holds any ``sample.*`` setting by name).
    ``reference_stats``: a published statistics file (``mu``, ``sigma``) as the FID reference
    instead; then only the overall FID (and IS) can be computed.
    ``memorisation``: also measure near-copies of the (long-tailed) training images per group.
    ``dist``: the processes of a launch (each calls this with the same arguments) share sampling and
    feature extraction; process 0 scores and writes the files (on a file system all of them see).

    The evaluation's :class:`~ccua.records.EvaluationRecord` (what is sampled, how it is scored)
    is made before anything is sampled; the output folder is ``out_dir``, else a folder named by
    the record under ``eval_root`` (default: the run's ``eval/``, or the sample file's folder's
    ``eval/``). With ``reuse``, metrics already in that folder with an equal record are returned
    instead of evaluating again. Returns the metrics (None on the processes other than 0) and
    the folder holding metrics.json and metrics.md.
    """
    from ccua.devices import default_device

    dist = dist or DistInfo(device=default_device(device))
    options = _Options(features, feature_path, bf16, allow_download, dist, Path(cache_dir), reference_split,
                       group_mode, per_class_metrics, max_reference, seed, memorisation)
    changes = {**(sample_changes or {}), **{k: v for k, v in {"sampler": sampler, "steps": steps,
                                                                "guidance": guidance}.items() if v is not None}}
    source = _Source(Path(source), use_ema, per_class, seed, changes, dist)
    if source.npz is not None and source.labels is None and reference_stats is None:
        raise ValueError(f"{source.npz} has no labels (arr_1 or labels): per-group and per-class metrics need the "
                         "class of every image; save them as arr_1, or give --reference-stats for the overall FID only")
    data = data or source.data
    scorer = _Scorer(options, data, reference_stats)
    record = EvaluationRecord(source.record, scorer.scoring)
    out = Path(out_dir) if out_dir else Path(eval_root or source.eval_root) / record.folder_name()
    stored = reusable_metrics(out, record) if reuse else None
    if stored is not None:
        log.info("%s: the same evaluation is already there, reused", out)
        return (stored if dist.is_main else None), out
    scorer.prepare()
    if dist.is_main:
        remove_other_metrics(out, record)
    barrier(dist)
    images, labels, info, npz = source.images(out)
    result = scorer.score(images, labels, info, npz)
    if result is None:  # not process 0
        return None, out
    provenance = _provenance(info, npz, reference_split, reference_stats, result)
    write_metrics(result, out, provenance, record.to_dict())
    log.info("metrics written to %s", out)
    return result, out


def score_images(images: np.ndarray, labels: np.ndarray, data: DataConfig, *, features: str = "inception",
                 feature_path: str | None = None, reference_split: str = "train", max_reference: int | None = None,
                 memorisation: bool = True, device: str | None = None, seed: int = 0,
                 cache_dir: str | Path = DEFAULT_CACHE) -> dict[str, Any]:
    """The metrics of images held in memory (uint8, with their labels) against ``data``: what
    :func:`evaluate_source` computes for a sample file, without files (:func:`ccua.evaluate_samples`)."""
    from ccua.devices import default_device

    dist = DistInfo(device=default_device(device))
    options = _Options(features, feature_path, False, False, dist, Path(cache_dir), reference_split, "thirds",
                       True, max_reference, seed, memorisation)
    _check_reference_data(data)
    scorer = _Scorer(options, data, None)
    scorer.prepare()
    return scorer.score(images, labels, {}, Path("<images in memory>"))


class _Source:
    """What an evaluation scores: a sample file as it is, or a checkpoint to sample (not yet
    sampled: its request is known from the checkpoint and the settings)."""

    def __init__(self, path: Path, use_ema: bool, per_class: int, seed: int, changes: dict[str, Any],
                 dist: DistInfo):
        from ccua.generate import SAMPLE_FILE, LoadedModel

        self.dist, self.per_class, self.seed = dist, per_class, seed
        self.npz = _sample_file(path)
        self.loaded, self.labels = None, None
        if self.npz is not None:
            self._images, self.labels, self.info = load_samples(self.npz)
            self.data = stored_config({"data": self.info["data"]}).data if "data" in self.info else None
            self.record = SampleFile(file_sha256(self.npz), self.info.get("request"))
            # each sample file its own root, so two files of one folder never share an evaluation
            self.eval_root = self.npz.parent / ("eval" if self.npz.name == SAMPLE_FILE else f"eval_{self.npz.stem}")
            return
        self.loaded = loaded = LoadedModel(path, use_ema=use_ema, device=dist.device)
        self.sample = loaded.sample_settings(changes)
        self.data = loaded.config.data
        self.record = SampleRequest.of(loaded.config.name, loaded.checkpoint_path, loaded.run_dir, loaded.step,
                                       loaded.use_ema, seed, per_class, len(loaded.class_counts), self.sample)
        self.eval_root = self.loaded.run_dir / "eval"

    def images(self, out: Path) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any], Path]:
        """(images, labels, provenance, the .npz): the file's, or new samples in ``out/samples``."""
        if self.loaded is None:
            return self._images, self.labels, self.info, self.npz
        npz = _sample_into(self.loaded, out, self.sample, self.per_class, self.seed, self.record, self.dist)
        images, labels, info = load_samples(npz)
        return images, labels, info, npz


METRICS_FILES = ("metrics.json", "metrics.md")


def reusable_metrics(out: Path, record: EvaluationRecord) -> dict[str, Any] | None:
    """The metrics in ``out`` when they were made by exactly ``record``, else None."""
    from ccua.report import load_metrics

    path = out / "metrics.json"
    if not path.is_file():
        return None
    try:
        stored = load_metrics(path)
    except ValueError:
        return None  # unreadable: evaluated anew, and the file replaced
    return stored if record.matches(stored.get("record")) else None


def remove_other_metrics(out: Path, record: EvaluationRecord) -> None:
    """Remove the metrics of another evaluation from ``out`` before this one writes there, so the
    folder never holds new samples beside old numbers."""
    path = out / "metrics.json"
    if not path.is_file():
        return
    try:
        from ccua.report import load_metrics

        stored = load_metrics(path).get("record")
    except ValueError:
        stored = None
    if record.matches(stored):
        return
    log.info("%s: removing the metrics of another evaluation (%s differ)", out,
             ", ".join(differing_keys(stored, record.to_dict())[:5]))
    for name in METRICS_FILES:
        (out / name).unlink(missing_ok=True)


def training_copies(images: np.ndarray, labels: np.ndarray, train, result: dict[str, Any], test) -> dict | None:
    """Near-copies of the training images the model saw (the long-tailed training set ``train``),
    per group of ``result``; None (with a warning in ``result``) when the images' shape differs."""
    from ccua.images import to_uint8_nchw
    from ccua.metrics.memorisation import memorisation

    train_images = np.stack([np.asarray(train.uint8_image(i)) for i in range(len(train))])
    generated = to_uint8_nchw(images).numpy()
    if generated.shape[1:] != train_images.shape[1:]:
        result["warnings"].append(f"near-copies not measured: generated images {generated.shape[1:]} and training "
                                  f"images {train_images.shape[1:]} differ in shape")
        return None
    groups = {name: row["classes"] for name, row in result["groups"].items()}
    return memorisation(generated, labels, train_images, train.labels, groups, test)


def _provenance(info: dict[str, Any], npz: Path, reference_split: str, reference_stats, result) -> dict[str, Any]:
    """Where the numbers come from, beside the record: the checkpoint and sample file, the sampler's
    settings once (``sample``), the counts, the reference."""
    provenance = {key: info.get(key) for key in ("checkpoint", "step", "ema", "seed", "num_samples",
                                                 "samples_per_class")}
    provenance["sample"] = {k[len("sample_"):]: v for k, v in info.items() if k.startswith("sample_")} or None
    provenance.update(samples=str(npz), train_class_counts=result.get("train_class_counts"),
                      train_class_counts_source=result.get("train_class_counts_source"),
                      reference_split=None if reference_stats is not None else reference_split,
                      reference_stats=None if reference_stats is None else str(reference_stats))
    return provenance
