"""``ccua compare``: train several methods under one data set, budget and seeds, evaluate each with
the same protocol, and write one report with paired differences to a baseline.

A comparison is given on the command line (``--methods plain,ccua``) or as a study file (YAML,
``studies/*.yaml``) whose variants may carry their own overrides and seeds, e.g. a cheaper CCUA
or a sensitivity sweep. Layout under the output folder::

    runs/<variant>-s<seed>/                   one training run each (resumed if unfinished, skipped if finished)
    runs/<variant>-s<seed>/eval/step<N>_<sampler><steps>_w<w>_n<k>_seed<s>_train-<hash>/
                                              its samples and metrics.json (one per guidance)
    runs/<variant>-s<seed>/eval/..._test-<hash>/   the same samples against another reference split
    runs/<variant>-s<seed>/eval_guidance/...  the guidance tuner's proxy evaluations
    guidance.json                             the guidance per variant (and the proxy sweep, if asked)
    report/                                   fixed guidance, first reference: tables, plots, tail grid
    report/<guidance>_<reference>/            the other combinations

Every phase skips what is already on disk with exactly its settings, so an interrupted comparison
resumes where it stopped, and an edited one never reports an old number: the evaluation folders
are named by their record (:mod:`ccua.records`), and a run folder trained with other settings is
refused.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ccua.build import load_checked_config
from ccua.config import (Config, ConfigError, as_dict, preset_names, read_yaml_file, save_config,
                         section_from_dict, setting)
from ccua.data import SPLITS
from ccua.jobs import Job, JobsFailed, run_jobs, worker_slot
from ccua.launch import child_environment, gpu_group, torchrun_command
from ccua.methods import DEFAULT_COMPARISON, METHODS
from ccua.metrics.subset_metrics import FID
from ccua.files import folder_holder, folder_lock, write_text_atomic
from ccua.records import step_prefix
from ccua.runs import RunFolder
from ccua.stopping import STOP_MARKER, StopSignals, TrainingInterrupted, stopping_at_once, wait_passing_on_stop

log = logging.getLogger(__name__)

@dataclass
class Variant:
    """One compared setting: a display name, its config overrides, and seeds (None: the study's)."""

    name: str
    overrides: list[str]
    seeds: list[int] | None = None


@dataclass
class CompareSettings:
    """What ``ccua compare`` runs; every variant gets the same data, steps, seeds and evaluation."""

    preset: str
    methods: list[str] = field(default_factory=list)  # "a+b" combines methods; each becomes a variant
    variants: list[Variant] = field(default_factory=list)  # explicit variants (study files)
    seeds: list[int] = field(default_factory=lambda: [0])
    # the seed whose run tunes each variant's w (None: the first of ``seeds``); a study keeps its own
    # first seed when a call narrows ``seeds``, so the tuned w never depends on the seeds of one call
    tuning_seed: int | None = None
    steps: int | None = None
    out_dir: Path = Path("runs/compare")
    overrides: list[str] = field(default_factory=list)
    per_class: int = 100  # generated images per class for the evaluation
    features: str = "inception"
    feature_path: str | None = None
    guidance: float | None = None  # one w for every variant (default: each preset's / published w)
    guidance_grid: list[float] | None = None  # also tune w per variant on a held-out proxy
    proxy_per_class: int = 20
    sampler_steps: int | None = None
    tail_seeds: int = 6  # columns of the cross-run tail grid
    max_reference: int | None = None  # cap on reference images (equal share per class)
    references: list[str] = field(default_factory=lambda: ["train"])
    baseline: str | None = None  # variant the others are compared with (default: the first)
    jobs: int = 1  # runs trained / evaluated side by side
    gpus_per_run: int | None = None  # train each run under torchrun on this many GPUs (CPU processes without CUDA)
    device: str | None = None

    def __post_init__(self):
        if not self.variants:
            self.variants = [Variant(m, [f"method.names=[{','.join(m.split('+'))}]"]) for m in self.methods]
        if not self.variants:
            raise ConfigError("nothing to compare: give --methods or a study file with variants")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ConfigError(f"variant names must be unique, got {names}")
        bad = [r for r in self.references if r not in SPLITS]
        if bad or not self.references:
            raise ConfigError(f"references must be a non-empty list of {SPLITS}, got {self.references}")
        if self.baseline is not None and self.baseline not in names:
            raise ConfigError(f"baseline {self.baseline!r} is not one of the variants {names}")
        if self.jobs < 1 or self.per_class < 1 or self.proxy_per_class < 1:
            raise ConfigError("jobs, per_class and proxy_per_class must be positive")
        self.out_dir = Path(self.out_dir)
        self._check_gpus_per_run()

    def _check_gpus_per_run(self) -> None:
        if self.gpus_per_run is None:
            return
        if self.gpus_per_run < 1:
            raise ConfigError(f"gpus_per_run must be a positive integer, got {self.gpus_per_run}")
        available = torch.cuda.device_count() if self.device != "cpu" else 0
        if available and self.jobs * self.gpus_per_run > available:
            raise ConfigError(f"{self.jobs} side-by-side runs x {self.gpus_per_run} GPUs per run need "
                              f"{self.jobs * self.gpus_per_run} GPUs, this machine has {available}: lower --jobs "
                              "or --gpus-per-run")


# --------------------------------------------------------------------------- study files

@dataclass
class StudyEvaluation:
    """A study file's ``evaluation:`` section (None: ``ccua compare``'s default)."""

    per_class: int | None = setting(None, at_least=1, meaning="generated images per class")
    features: str | None = None
    feature_path: str | None = None
    guidance: float | None = setting(None, at_least=-1, at_most=100)
    guidance_grid: list[float] | None = None
    proxy_per_class: int | None = setting(None, at_least=1, meaning="images per class of the guidance proxy")
    sampler_steps: int | None = setting(None, at_least=1, meaning="sampler steps")
    tail_seeds: int | None = setting(None, at_least=0, meaning="columns of the tail grid; 0 = none")
    max_reference: int | None = setting(None, at_least=1, meaning="reference images")
    references: list[str] | None = None


@dataclass
class StudyFile:
    """A study file (``studies/*.yaml``), read with the config's parser and checks."""

    preset: str | None = None
    variants: dict[str, Any] = field(default_factory=dict)  # name -> overrides, or {overrides, seeds}
    seeds: list[int] | None = None
    steps: int | None = setting(None, at_least=0, meaning="training steps of every run")
    overrides: list[str] = field(default_factory=list)
    evaluation: StudyEvaluation = field(default_factory=StudyEvaluation)
    baseline: str | None = None
    jobs: int | None = setting(None, at_least=1, meaning="runs side by side")
    gpus_per_run: int | None = setting(None, at_least=1, meaning="GPUs per run")


def study_names() -> list[str]:
    """The studies shipped with the package (``ccua compare <name>``)."""
    folder = resources.files("ccua") / "studies"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def find_study(name_or_path: str) -> str:
    """A study file's path: the path given, or a shipped study by name (``fashion_mnist_lt_memorising``;
    ``<name>_study`` where the bare name is also a preset, e.g. ``fashion_mnist_lt_study``)."""
    if Path(name_or_path).is_file() or Path(name_or_path).suffix in (".yaml", ".yml"):
        return name_or_path
    shipped, folder = study_names(), resources.files("ccua") / "studies"
    if name_or_path in shipped and name_or_path not in preset_names():  # a preset of the same name wins
        return str(folder / f"{name_or_path}.yaml")
    bare = name_or_path.removesuffix("_study")
    if name_or_path.endswith("_study") and bare in shipped:
        return str(folder / f"{bare}.yaml")
    return name_or_path


def is_study_file(path: str) -> bool:
    """A YAML file with a top-level ``variants`` mapping (a preset or run config has none)."""
    file = Path(path)
    if file.suffix not in (".yaml", ".yml") or not file.is_file():
        return False
    try:
        data = read_yaml_file(file, "study file")
    except ConfigError:
        return False
    return isinstance(data, dict) and "variants" in data


def load_study(path: str | Path, only: list[str] | None = None, **changes: Any) -> CompareSettings:
    """Settings from a study file; ``changes`` (e.g. out_dir, jobs, device from the command line) win.

    ``only`` keeps the named variants (in the file's order), e.g. the core of a long study first: its
    runs, evaluations and reports are the same as in the whole study's, which later skips them."""
    path = Path(path)
    study = section_from_dict(StudyFile, read_yaml_file(path, "study file") or {}, str(path))
    variants = [_variant(path, str(name), spec) for name, spec in study.variants.items()]
    if only:
        variants = named_variants(variants, only, path)
    if not study.preset:
        raise ConfigError(f"{path}: a study needs `preset:` (a preset name or YAML config)")
    given = {"preset": study.preset, "variants": variants, "seeds": study.seeds, "steps": study.steps,
             "overrides": study.overrides, "baseline": study.baseline, "jobs": study.jobs,
             "gpus_per_run": study.gpus_per_run, **as_dict(study.evaluation)}
    given.update({k: v for k, v in changes.items() if v is not None})
    if study.seeds:
        given["tuning_seed"] = study.seeds[0]
    return CompareSettings(**{k: v for k, v in given.items() if v is not None})


def named_variants(variants: list[Variant], only: list[str], source: str | Path) -> list[Variant]:
    """The variants named in ``only``, in their own order; a name the study lacks is a ConfigError."""
    unknown = [name for name in only if name not in {v.name for v in variants}]
    if unknown:
        raise ConfigError(f"{source}: no variant(s) {unknown} (the file has {[v.name for v in variants]})")
    return [v for v in variants if v.name in only]


def _variant(path: Path, name: str, spec: Any) -> Variant:
    """One entry of a study's ``variants:``: a list of overrides, or {overrides: [...], seeds: [...]}."""
    spec = {"overrides": spec} if isinstance(spec, list) else spec
    if not isinstance(spec, dict) or set(spec) - {"overrides", "seeds"} or not isinstance(spec.get("overrides", []),
                                                                                           list):
        raise ConfigError(f"{path}: variant {name!r} must be a list of overrides or {{overrides: [...], seeds: [...]}}")
    seeds = spec.get("seeds")
    if seeds is not None and (not isinstance(seeds, list) or not seeds
                              or not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds)):
        raise ConfigError(f"{path}: variant {name!r}: seeds must be a non-empty list of integers, got {seeds!r}")
    return Variant(name, [str(o) for o in spec.get("overrides", [])], seeds)


def study_settings(study_or_preset: str, *, only: list[str] | None = None, methods: list[str] | None = None,
                   overrides: list[str] | None = None, **given: Any) -> CompareSettings:
    """What ``ccua compare`` runs: a study file (by path or shipped name, its variants optionally
    narrowed to ``only``) or a preset with ``methods`` (default plain and CCUA) and shared
    ``overrides``; ``given`` settings (None: not given) win over the file's."""
    study = find_study(study_or_preset)
    if is_study_file(study):
        if methods or overrides:
            raise ConfigError(f"{study} is a study file: its variants and overrides are set in the file")
        given["out_dir"] = given.get("out_dir") or Path("runs") / Path(study).stem
        return load_study(study, only=only, **given)
    if only:
        raise ConfigError("--only picks variants of a study file; with a preset, list them with --methods")
    given = {k: v for k, v in given.items() if v is not None}
    return CompareSettings(preset=study, methods=methods or list(DEFAULT_COMPARISON), overrides=overrides or [],
                           **given)


# --------------------------------------------------------------------------- runs

@dataclass
class PlannedRun:
    variant: str
    seed: int
    config: Config
    run_dir: Path

    @property
    def name(self) -> str:
        return f"{self.variant}-s{self.seed}"


def variant_config(settings: CompareSettings, variant: Variant, seed: int) -> Config:
    """The run config of one (variant, seed): the preset, the shared overrides, then the variant's."""
    overrides = list(settings.overrides) + list(variant.overrides) + [
        f"train.seed={seed}", f"name={variant.name}-s{seed}", f"train.out_dir={settings.out_dir / 'runs'}"]
    if settings.steps is not None:
        overrides.append(f"train.steps={settings.steps}")
    if settings.jobs > 1 or settings.gpus_per_run:
        overrides.append("train.progress=false")  # side-by-side bars would interleave, a log file needs none
    config = load_checked_config(settings.preset, overrides)
    chose_guidance = any(o.startswith("sample.guidance=") for o in settings.overrides + variant.overrides)
    # the guidance a method's authors evaluate with, where the preset does not set its own
    published = [METHODS[n].published_guidance for n in config.method.names
                 if n in METHODS and METHODS[n].published_guidance is not None]
    if settings.guidance is not None:
        config.sample.guidance = settings.guidance
    elif published and not chose_guidance:
        config.sample.guidance = published[0]
    return config


def planned_run(settings: CompareSettings, variant: Variant, seed: int) -> PlannedRun:
    """The run of one (variant, seed) in the comparison's output folder."""
    return PlannedRun(variant.name, seed, variant_config(settings, variant, seed),
                      settings.out_dir / "runs" / f"{variant.name}-s{seed}")


def planned_runs(settings: CompareSettings) -> list[PlannedRun]:
    return [planned_run(settings, variant, seed) for variant in settings.variants
            for seed in variant.seeds or settings.seeds]


def tuning_runs(settings: CompareSettings, runs: list[PlannedRun]) -> dict[str, PlannedRun]:
    """Per variant, the run its w is tuned on: its own first seed where it lists seeds, else the
    study's first (``tuning_seed``), planned or not; without a grid, none."""
    if not settings.guidance_grid:
        return {}
    planned = {(run.variant, run.seed): run for run in runs}
    tuners = {}
    for variant in settings.variants:
        if not any(run.variant == variant.name for run in runs):
            continue
        seed = variant.seeds[0] if variant.seeds else (
            settings.seeds[0] if settings.tuning_seed is None else settings.tuning_seed)
        tuners[variant.name] = planned.get((variant.name, seed)) or planned_run(settings, variant, seed)
    return tuners


def check_tuning_runs(tuners: dict[str, PlannedRun], runs: list[PlannedRun]) -> None:
    """A tuning run this call does not train must be trained already (a ConfigError before anything
    runs): tuning on another seed instead would give the variant another w."""
    planned = {run.name for run in runs}
    for variant, tuner in tuners.items():
        if tuner.name in planned:
            continue
        folder = RunFolder(tuner.run_dir)
        folder.check_holds(tuner.config, tuner.name)
        if not folder.is_finished(tuner.config.train.steps):
            raise ConfigError(f"{variant}'s guidance is tuned on {tuner.name} (the first seed), which is not "
                              f"trained to {tuner.config.train.steps} steps: train it first (--seeds {tuner.seed})")


def train_one(config: Config, run_dir: Path, device: str | None = None) -> Path:
    """Train a run to its step budget: skipped when finished, resumed when a checkpoint exists."""
    from ccua.distributed import cleanup
    from ccua.training.trainer import Trainer

    folder = RunFolder(run_dir)
    folder.check_holds(config, run_dir.name)
    if folder.is_finished(config.train.steps):
        log.info("%s: finished, skipped", run_dir.name)
        return run_dir
    trainer = Trainer(config, resume=str(run_dir) if folder.checkpoints() else None, run_dir=run_dir, device=device)
    try:
        trainer.train()
    finally:
        cleanup(trainer.dist)
    return run_dir


def train_under_torchrun(config: Config, run_dir: Path, processes: int, device: str | None = None) -> Path:
    """Train a run as :func:`train_one` does, as ``torchrun --standalone --nproc_per_node <processes>
    -m ccua.cli train <run_dir>/launch.yaml --run-dir <run_dir> --resume auto``.

    With CUDA the run sees its own GPUs (the worker's slot: GPUs slot*processes ..); without,
    ``processes`` gloo processes share the worker's threads. Output goes to ``run_dir/launch.log``;
    a failed launch is a RuntimeError naming its last error line and the log. A stop signal to this
    process is passed on to torchrun; its trainings write a checkpoint, and :class:`TrainingInterrupted`
    (exit status 75) follows.
    """
    folder = RunFolder(run_dir)
    folder.check_holds(config, run_dir.name)
    if folder.is_finished(config.train.steps):
        log.info("%s: finished, skipped", run_dir.name)
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file = run_dir / "launch.yaml"
    save_config(config, config_file)
    arguments = ["train", str(config_file), "--run-dir", str(run_dir), "--resume", "auto"]
    command = torchrun_command(sys.executable, processes, arguments + (["--device", device] if device else []))
    gpus = gpu_group(worker_slot(), processes) if torch.cuda.is_available() and device != "cpu" else None
    env = child_environment(os.environ, gpus, max(1, torch.get_num_threads() // processes))
    log_path, started = run_dir / "launch.log", time.time()
    with open(log_path, "a") as log_file, StopSignals() as stop:
        launch = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        status = wait_passing_on_stop(launch, stop)
    marker = run_dir / STOP_MARKER  # torchrun exits 1 for a stopped training: the marker says it stopped
    if status != 0 and (stop.received or (marker.exists() and marker.stat().st_mtime >= started)):
        message = (f"{run_dir.name}: stopped by {stop.received or 'a signal to its processes'} (torchrun's status "
                   f"{status}; log: {log_path}); the same command resumes it")
        log.warning(message)
        raise TrainingInterrupted(message)
    if status != 0:
        lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
        last = next((line for line in reversed(lines) if line.startswith("ccua: error:")), lines[-1] if lines else "")
        raise RuntimeError(f"torchrun exited with status {status}: {last.strip()} (log: {log_path})")
    return run_dir


def _training_job(settings: CompareSettings, run: PlannedRun) -> Job:
    """How one run is trained: in the job's process, or under torchrun with ``gpus_per_run`` processes."""
    name = f"train {run.name}"
    if settings.gpus_per_run:
        return Job(name, train_under_torchrun, (run.config, run.run_dir, settings.gpus_per_run, settings.device))
    return Job(name, train_one, (run.config, run.run_dir, settings.device))


#: the state of a run trained to its budget with the planned settings (:func:`study_status`)
TRAINED = "trained"


@dataclass
class RunStatus:
    """Where one planned run stands on disk (:func:`study_status`)."""

    name: str
    variant: str
    trained_step: int
    budget: int
    state: str
    evaluations: int  # stored evaluations of the budget's checkpoint (their metrics.json under eval/)
    seconds_per_step: float | None = None  # the median logged step time (None before a step is logged)

    @property
    def is_trained(self) -> bool:
        return self.state == TRAINED

    @property
    def steps_left(self) -> int:
        return max(0, self.budget - self.trained_step)


def training_time_left(statuses: list[RunStatus], jobs: int) -> float | None:
    """Wall seconds of training left with ``jobs`` runs side by side: each run's steps left at its
    own logged step time, else at its variant's (another seed's median), else at the mean of all
    measured runs; None when no run has logged a step. An estimate: it holds while the machine
    stays as loaded as it was when the steps were timed."""
    by_variant: dict[str, list[float]] = {}
    for status in statuses:
        if status.seconds_per_step is not None:
            by_variant.setdefault(status.variant, []).append(status.seconds_per_step)
    if not by_variant:
        return None
    fallback = statistics.mean(t for times in by_variant.values() for t in times)
    seconds = 0.0
    for status in statuses:
        known = by_variant.get(status.variant)
        per_step = status.seconds_per_step or (statistics.mean(known) if known else fallback)
        seconds += status.steps_left * per_step
    return seconds / max(1, jobs)


def study_status(settings: CompareSettings) -> list[RunStatus]:
    """What the output folder already holds for each planned run, without training or locking
    anything: its newest checkpoint against the budget; whether it is trained, training now (the
    process holding its folder), waiting to be resumed, not started, or trained with other settings
    (the differing keys); and how many evaluations of the budget's checkpoint are stored (of any
    guidance and reference: ``ccua compare`` reuses those whose settings match)."""
    statuses = []
    for run in planned_runs(settings):
        folder, budget = RunFolder(run.run_dir), run.config.train.steps
        trained, holder = folder.trained_step(), folder_holder(run.run_dir)
        differing = folder.training_differences(run.config)
        if differing:
            state = "trained with other settings: " + ", ".join(sorted(differing))
        elif holder is not None:
            state = f"in use by {holder}"
        elif folder.is_finished(budget):
            state = TRAINED
        else:
            state = "to resume" if folder.checkpoints() else "not started"
        evaluations = len(list((run.run_dir / "eval").glob(f"{step_prefix(budget)}*/metrics.json")))
        statuses.append(RunStatus(run.name, run.variant, trained, budget, state, evaluations,
                                  folder.seconds_per_step()))
    return statuses


# --------------------------------------------------------------------------- evaluation

def evaluated_checkpoint(run: PlannedRun) -> Path:
    """The checkpoint of the study's step budget: a run trained further is evaluated at that
    step, never at a later one (a ConfigError when that checkpoint was not kept)."""
    return RunFolder(run.run_dir).checkpoint_at(run.config.train.steps)


def _evaluation_settings(settings: CompareSettings) -> dict[str, Any]:
    """What every evaluation of the comparison shares (the rest is per run and guidance)."""
    return {"features": settings.features, "feature_path": settings.feature_path,
            "steps": settings.sampler_steps, "max_reference": settings.max_reference, "device": settings.device}


def evaluate_one(settings: CompareSettings, run: PlannedRun, guidance: float) -> list[Path]:
    """Sample the run's checkpoint once at ``guidance`` and score the samples against every
    reference split. An evaluation folder whose record equals the request is reused; any change
    (sampler steps, reference cap, feature network, counts, seed, ...) is a new evaluation."""
    from ccua.evaluation import evaluate_source

    files, first = [], None
    for reference in settings.references:
        # the first reference samples the checkpoint; the others score those samples
        source = evaluated_checkpoint(run) if first is None else first / "samples"
        _, out = evaluate_source(source, eval_root=run.run_dir / "eval", per_class=settings.per_class,
                                 guidance=guidance, seed=run.seed, reference_split=reference, reuse=True,
                                 **_evaluation_settings(settings))
        first = first or out
        files.append(out / "metrics.json")
    return files


#: guidance modes: the variant's fixed w, the w tuned on the overall proxy FID, on the tail's
GUIDANCE_MODES = ("fixed", "tuned", "tuned_tail")
#: the proxy FID each tuned mode minimises: of all images, of the tail group's
TUNED_ON = {"tuned": "overall", "tuned_tail": "tail"}


def evaluate_mode(settings: CompareSettings, run: PlannedRun, mode: str, tuned_on: PlannedRun) -> tuple[float, list[Path]]:
    """Evaluate at the variant's fixed w, or at a w tuned on ``tuned_on`` (see :func:`tuning_runs`)."""
    if mode == "fixed":
        guidance = run.config.sample.guidance
    else:  # reads the sweep's files
        guidance = tune_guidance(settings, tuned_on, settings.guidance_grid)[TUNED_ON[mode]]
    return guidance, evaluate_one(settings, run, guidance)


#: the noise seed of the guidance proxy's samples (not the final evaluation's)
PROXY_SEED = 10_000


def tune_guidance(settings: CompareSettings, run: PlannedRun, grid: list[float]) -> dict[str, Any]:
    """The w of ``grid`` with the lowest FID on a small held-out proxy (few samples from their own
    noise seed, against the balanced test split, not the training-set reference of the final
    numbers): overall (``overall``) and on the tail group alone (``tail``), with the proxy FIDs."""
    from ccua.evaluation import evaluate_source

    scores: dict[str, dict[str, float]] = {"overall": {}, "tail": {}}
    for w in grid:
        result, _ = evaluate_source(evaluated_checkpoint(run), eval_root=run.run_dir / "eval_guidance",
                                    per_class=settings.proxy_per_class, guidance=w, seed=PROXY_SEED,
                                    per_class_metrics=False, reference_split="test", reuse=True,
                                    **_evaluation_settings(settings))
        scores["overall"][f"{w:g}"] = result["overall"][FID.key]
        scores["tail"][f"{w:g}"] = (result["groups"].get("tail") or {}).get(FID.key)
    tuned = {"tuned_on": run.name, "proxy_fid": scores["overall"], "proxy_fid_tail": scores["tail"]}
    for criterion, values in scores.items():
        known = {w: fid for w, fid in values.items() if fid is not None}
        tuned[criterion] = float(min(known, key=known.get)) if known else None
    return tuned


def tail_samples(checkpoint: Path, num_seeds: int, guidance: float, device: str | None,
                 sampler_steps: int | None = None) -> tuple[torch.Tensor, list[str]]:
    """uint8 [tail classes * num_seeds, H, W, C] and column labels: every run's tail classes, drawn
    from the same initial noise (sample i of the stream) in every run."""
    from ccua.data import class_groups, to_uint8
    from ccua.generate import LoadedModel
    from ccua.devices import default_device

    loaded = LoadedModel(checkpoint, device=default_device(device))
    tail = class_groups(len(loaded.class_counts), loaded.class_counts)["tail"]
    labels = torch.tensor([c for c in tail for _ in range(num_seeds)])
    sample = replace(loaded.config.sample, guidance=guidance, steps=sampler_steps or loaded.config.sample.steps)
    images = loaded.sample(labels, sample, seed=777, progress=False)
    return to_uint8(images), [f"c{c} s{s}" for c in tail for s in range(num_seeds)]


# --------------------------------------------------------------------------- the phases

def _check(results, what: str) -> list[str]:
    failed = [f"{r.name}: {r.error}" for r in results if r.error]
    for line in failed:
        log.error("%s failed for %s", what, line)
    return failed


def comparison_jobs(settings: CompareSettings, runs: list[PlannedRun], tuners: dict[str, PlannedRun]) -> list[Job]:
    """Every job of the comparison, in priority order: a variant's trainings, its guidance sweep
    (on its run in ``tuners``), then its evaluations, before the next variant, so finished variants
    are evaluated while later ones still train."""
    by_variant: dict[str, list[PlannedRun]] = {}
    for run in runs:
        by_variant.setdefault(run.variant, []).append(run)
    jobs = []
    for variant, variant_runs in by_variant.items():
        jobs += [_training_job(settings, run) for run in variant_runs]
        tuner = tuners.get(variant)
        if tuner is not None:
            trained_here = (f"train {tuner.name}",) if tuner.name in {r.name for r in variant_runs} else ()
            jobs.append(Job(f"tune {variant}", tune_guidance, (settings, tuner, settings.guidance_grid),
                            after=trained_here))
        for run in variant_runs:
            jobs.append(Job(f"evaluate {run.name} fixed", evaluate_mode, (settings, run, "fixed", tuner),
                            after=(f"train {run.name}",)))
            previous = f"evaluate {run.name} fixed"
            for mode in GUIDANCE_MODES[1:] if settings.guidance_grid else ():
                # one after the other: two modes may pick the same w, and so the same evaluation
                jobs.append(Job(f"evaluate {run.name} {mode}", evaluate_mode, (settings, run, mode, tuner),
                                after=(f"tune {variant}", previous)))
                previous = f"evaluate {run.name} {mode}"
    return jobs


def _write_guidance(settings: CompareSettings, runs: list[PlannedRun], results: dict[str, Any]) -> None:
    """guidance.json: per variant the fixed w and, with a grid, the w tuned overall (``tuned``) and on
    the tail (``tuned_tail``) with the run they were tuned on and the proxy FIDs they minimise. The
    entries of variants this call did not run (``--only``) stay as an earlier call wrote them."""
    path = settings.out_dir / "guidance.json"
    record = json.loads(path.read_text()) if path.is_file() else {}
    for variant in dict.fromkeys(run.variant for run in runs):
        config = next(run.config for run in runs if run.variant == variant)
        record[variant] = {"step": config.train.steps, "fixed": config.sample.guidance}
        tuned = results.get(f"tune {variant}")
        if tuned is not None and tuned.error is None:
            found = tuned.value
            record[variant].update(tuned=found["overall"], tuned_tail=found["tail"], tuned_on=found["tuned_on"],
                                   proxy_fid=found["proxy_fid"], proxy_fid_tail=found["proxy_fid_tail"],
                                   grid=settings.guidance_grid)
    write_text_atomic(path, json.dumps(record, indent=2))


def _write_reports(settings: CompareSettings, runs: list[PlannedRun], results: dict[str, Any]) -> Path:
    """One report per (guidance mode, reference) over the runs evaluated so."""
    from ccua.report import make_report

    baseline = settings.baseline or settings.variants[0].name
    main_report = settings.out_dir / "report"
    written = set()
    for mode in GUIDANCE_MODES if settings.guidance_grid else GUIDANCE_MODES[:1]:
        evaluated = [(run, results[f"evaluate {run.name} {mode}"]) for run in runs]
        evaluated = [(run, result.value[1]) for run, result in evaluated if result.error is None]
        for index, reference in enumerate(settings.references):
            if not evaluated:
                continue
            folder = main_report if (mode, index) == ("fixed", 0) else _report_folder(main_report, mode, reference)
            make_report([files[index] for _, files in evaluated], folder, names=[run.variant for run, _ in evaluated],
                        baseline=baseline, title=f"Comparison ({_MODE_TITLES[mode]}, reference: balanced {reference} "
                                                  "split)")
            written.add(folder)
    _remove_earlier_reports(main_report, written)
    return main_report


def _report_folder(main_report: Path, mode: str, reference: str) -> Path:
    """Where the report of one (guidance mode, reference split) goes, but for the main one."""
    return main_report / f"{mode}_{reference}"


def _remove_earlier_reports(main_report: Path, written: set[Path]) -> None:
    """Remove the (guidance mode, reference) report folders an earlier comparison left that this one
    did not write (a mode or reference dropped, nothing evaluated under it): an old table never
    stands beside the new ones as if it were one of them."""
    for folder in (_report_folder(main_report, mode, split) for mode in GUIDANCE_MODES for split in SPLITS):
        if folder not in written and (folder / "comparison.md").exists():
            log.info("removing %s: an earlier comparison's report this one does not make", folder)
            shutil.rmtree(folder)


_MODE_TITLES = {"fixed": "fixed guidance", "tuned": "guidance tuned on the overall proxy FID",
                "tuned_tail": "guidance tuned on the tail's proxy FID"}


def compare(settings: CompareSettings) -> Path:
    """Train, evaluate and report every (variant, seed); returns the main report folder.

    Runs already in the output folder are reused only when they hold exactly the planned training
    (resumed when unfinished, evaluated at the budget's checkpoint when trained further); a folder
    trained with other settings stops the comparison before anything runs, naming them. Two
    comparisons into one output folder are refused (a lock on the folder)."""
    runs = planned_runs(settings)
    for run in runs:  # before anything runs: an edited setting never reuses another training's folder
        RunFolder(run.run_dir).check_holds(run.config, run.name)
    tuners = tuning_runs(settings, runs)
    check_tuning_runs(tuners, runs)
    with stopping_at_once("ccua compare"), folder_lock(settings.out_dir, f"ccua compare into {settings.out_dir}"):
        return _compare(settings, runs, tuners)


def _compare(settings: CompareSettings, runs: list[PlannedRun], tuners: dict[str, PlannedRun]) -> Path:
    from ccua.report import tail_grid

    jobs = comparison_jobs(settings, runs, tuners)
    results = {job.name: result for job, result in zip(jobs, run_jobs(jobs, settings.jobs))}
    failed = _check(results.values(), "a job")
    _write_guidance(settings, runs, results)
    main_report = _write_reports(settings, runs, results)
    trained = [run for run in runs if results[f"train {run.name}"].error is None]
    if settings.tail_seeds and trained:
        tails, columns = {}, []
        for run in trained:
            if run.variant not in tails:
                images, columns = tail_samples(evaluated_checkpoint(run), settings.tail_seeds,
                                               run.config.sample.guidance, settings.device, settings.sampler_steps)
                tails[run.variant] = images.numpy()
        tail_grid(tails, main_report / "tail_grid.png", column_labels=columns)
    if failed:
        raise JobsFailed(f"{len(failed)} job(s) failed (the report covers the others): " + "; ".join(failed))
    return main_report


__all__ = ["CompareSettings", "RunStatus", "Variant", "compare", "is_study_file", "load_study", "planned_runs",
           "study_settings", "study_status", "training_time_left", "variant_config"]
