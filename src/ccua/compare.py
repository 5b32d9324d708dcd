"""``ccua compare``: train several methods under one data set, budget and seeds, evaluate each with
the same protocol, and write one report.

Layout under the output folder::

    runs/<method>-s<seed>/      one training run each (resumed if unfinished, skipped if finished)
    runs/<method>-s<seed>/eval/ its samples and metrics.json
    guidance.json               the guidance used per method (and the proxy sweep, if asked)
    report/                     the comparison table, plots and tail-class grids
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ccua.config import Config, load_config
from ccua.training.checkpoint import list_checkpoints, load_checkpoint

log = logging.getLogger(__name__)

#: published sampling guidance (eps_c + w (eps_c - eps_u)) where the preset does not set its own
PUBLISHED_GUIDANCE = {"cbdm": 1.6, "oclt": 1.5}


@dataclass
class CompareSettings:
    """What ``ccua compare`` runs; every method gets the same data, steps, seeds and evaluation."""

    preset: str
    methods: list[str]
    seeds: list[int] = field(default_factory=lambda: [0])
    steps: int | None = None
    out_dir: Path = Path("runs/compare")
    overrides: list[str] = field(default_factory=list)
    per_class: int = 100  # generated images per class for the evaluation
    features: str = "inception"
    feature_path: str | None = None
    guidance_grid: list[float] | None = None  # tune w per method on a held-out proxy
    proxy_per_class: int = 20
    sampler_steps: int | None = None
    tail_seeds: int = 6  # columns of the cross-run tail grid
    max_reference: int | None = None  # cap on reference images (equal share per class)
    device: str | None = None


def method_config(settings: CompareSettings, method: str, seed: int) -> Config:
    """The run config of one (method, seed): the preset, the shared overrides, then the method."""
    names = method.split("+")
    overrides = list(settings.overrides) + [f"method.names=[{','.join(names)}]", f"train.seed={seed}",
                                            f"name={method}-s{seed}", f"train.out_dir={settings.out_dir / 'runs'}"]
    if settings.steps is not None:
        overrides.append(f"train.steps={settings.steps}")
    config = load_config(settings.preset, overrides)
    published = [PUBLISHED_GUIDANCE[n] for n in names if n in PUBLISHED_GUIDANCE]
    if published and not any(o.startswith("sample.guidance=") for o in settings.overrides):
        config.sample.guidance = published[0]
    return config


def run_dir_of(settings: CompareSettings, method: str, seed: int) -> Path:
    return settings.out_dir / "runs" / f"{method}-s{seed}"


def train_one(settings: CompareSettings, config: Config, run_dir: Path) -> Path:
    """Train a run to its step budget: skipped when finished, resumed when a checkpoint exists."""
    from ccua.training.distributed import cleanup
    from ccua.training.trainer import Trainer

    found = list_checkpoints(run_dir / "checkpoints")
    if found and int(load_checkpoint(found[-1])["step"]) >= config.train.steps:
        log.info("%s: finished, skipped", run_dir.name)
        return run_dir
    trainer = Trainer(config, resume=str(run_dir) if found else None, run_dir=run_dir, device=settings.device)
    try:
        trainer.train()
    finally:
        cleanup(trainer.dist)
    return run_dir


def tune_guidance(settings: CompareSettings, run_dir: Path, grid: list[float]) -> tuple[float, dict[str, float]]:
    """The w of ``grid`` with the lowest FID on a small held-out proxy: few samples from their own
    noise seed, against the balanced test split (not the training-set reference of the final numbers)."""
    from ccua.evaluation import evaluate_target

    scores = {}
    for w in grid:
        result, _ = evaluate_target(run_dir, out_dir=run_dir / "eval_guidance" / f"w{w:g}", features=settings.features,
                                    feature_path=settings.feature_path, per_class=settings.proxy_per_class,
                                    guidance=w, steps=settings.sampler_steps, seed=10_000, per_class_metrics=False,
                                    reference_split="test", max_reference=settings.max_reference,
                                    device=settings.device)
        scores[f"{w:g}"] = result["overall"]["fid"]
    best = min(scores, key=scores.get)
    return float(best), scores


def tail_samples(run_dir: Path, num_seeds: int, guidance: float, device: str | None) -> tuple["torch.Tensor", list[str]]:
    """uint8 [tail classes * num_seeds, H, W, C] and column labels: every run's tail classes, drawn
    from the same initial noise (sample i of the stream) in every run."""
    from ccua.data import class_groups, to_uint8
    from ccua.sampling import LoadedModel

    loaded = LoadedModel(run_dir, device=device or "cpu")
    tail = class_groups(len(loaded.class_counts), loaded.class_counts)["tail"]
    labels = torch.tensor([c for c in tail for _ in range(num_seeds)])
    sample = replace(loaded.config.sample, guidance=guidance)
    images = loaded.sample(labels, sample, seed=777, progress=False)
    return to_uint8(images), [f"c{c} s{s}" for c in tail for s in range(num_seeds)]


def compare(settings: CompareSettings) -> Path:
    """Train, evaluate and report every (method, seed); returns the report folder."""
    from ccua.evaluation import evaluate_target
    from ccua.report import make_report, tail_grid

    settings.out_dir.mkdir(parents=True, exist_ok=True)
    guidance_path = settings.out_dir / "guidance.json"
    guidance_record = json.loads(guidance_path.read_text()) if guidance_path.exists() else {}
    metric_files, names = [], []
    tails: dict[str, "torch.Tensor"] = {}
    tail_columns: list[str] = []
    for method in settings.methods:
        for seed in settings.seeds:
            config = method_config(settings, method, seed)
            run_dir = run_dir_of(settings, method, seed)
            train_one(settings, config, run_dir)
            if settings.guidance_grid and method not in guidance_record:
                best, scores = tune_guidance(settings, run_dir, settings.guidance_grid)
                guidance_record[method] = {"guidance": best, "proxy_fid": scores}
                guidance_path.write_text(json.dumps(guidance_record, indent=2))
            w = guidance_record.get(method, {}).get("guidance", config.sample.guidance)
            guidance_record.setdefault(method, {"guidance": w})
            eval_dir = run_dir / "eval" / f"w{w:g}_n{settings.per_class}"
            if not (eval_dir / "metrics.json").exists():
                evaluate_target(run_dir, out_dir=eval_dir, features=settings.features,
                                feature_path=settings.feature_path, per_class=settings.per_class, guidance=w,
                                steps=settings.sampler_steps, seed=seed, max_reference=settings.max_reference,
                                device=settings.device)
            metric_files.append(eval_dir / "metrics.json")
            names.append(method)
            if seed == settings.seeds[0] and settings.tail_seeds:
                images, tail_columns = tail_samples(run_dir, settings.tail_seeds, w, settings.device)
                tails[method] = images.numpy()
    guidance_path.write_text(json.dumps(guidance_record, indent=2))
    report_dir = settings.out_dir / "report"
    make_report(metric_files, report_dir, names=names)
    if tails:
        tail_grid(tails, report_dir / "tail_grid.png", column_labels=tail_columns)
    return report_dir


__all__ = ["CompareSettings", "compare", "method_config"]
