"""The ``ccua`` command line: thin wrappers that parse, load the config and call the library.

Known user errors (bad config or options, missing data, unreadable or unwritable checkpoints,
diverged training, ...) print one line ``ccua: error: ...`` on stderr and exit with status 2; set
CCUA_DEBUG=1 to see their traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from ccua.config import ConfigError, preset_names

if TYPE_CHECKING:  # the CLI imports torch-heavy modules only when a command runs
    from ccua.compare import CompareSettings

log = logging.getLogger("ccua")


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO if _is_main_process() else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line error format (sub-command parsers inherit it)."""

    def error(self, message: str):
        print(f"ccua: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def _int_at_least(minimum: int, wording: str):
    """An argparse type: an integer >= ``minimum``, else the option's one-line error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {wording}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {wording}, got {value}")
        return value
    return parse


positive_int = _int_at_least(1, "a positive integer")
non_negative_int = _int_at_least(0, "an integer >= 0")


def _load(preset: str | None, overrides: list[str]):
    """The config of a preset or YAML path with overrides, checked against the registries."""
    from ccua.build import load_checked_config

    return load_checked_config(preset, overrides)


def _split_preset(items: list[str]) -> tuple[str | None, list[str]]:
    """The first positional that is not a key=value override is the preset or YAML path."""
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items


# --------------------------------------------------------------------------- train

def cmd_train(args: argparse.Namespace) -> int:
    preset, overrides = _split_preset(args.config)
    config = _load(preset, overrides)
    if args.dry_run:
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    if args.run_dir and args.resume not in (None, "auto"):
        raise ConfigError(f"--run-dir goes with --resume auto or no --resume, not --resume {args.resume} "
                          "(which names its own run folder)")
    if args.verify and _is_main_process():  # once per launch; a failure on rank 0 ends the others (torchrun)
        _verify_data(config.data)
    from ccua.training import train

    run_dir = train(config, resume=args.resume, device=args.device, run_dir=args.run_dir)
    if _is_main_process():
        print(f"run folder: {run_dir}")
    return 0


def _is_main_process() -> bool:
    """Process 0 of a launch (torchrun's RANK or srun's SLURM_PROCID), or a single process."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) or 0) == 0


# --------------------------------------------------------------------------- sample

def cmd_sample(args: argparse.Namespace) -> int:
    from ccua.distributed import process_group

    with process_group(args.device) as dist:  # one process, or the processes of torchrun / srun sharing the work
        folder = _sample(args, dist)
    if dist.is_main:
        print(f"samples: {folder}")
    return 0


def _sample(args: argparse.Namespace, dist) -> Path:
    from ccua.config import sample_changes, section_overrides
    from ccua.generate import sample_run

    options = {"sampler": args.sampler, "steps": _sampler_steps(args), "guidance": args.guidance,
               "batch_size": args.batch_size, "eta": args.eta}  # --eta: the old spelling, moved with a warning
    changes = sample_changes(section_overrides(args.overrides, ("sample",), "sample"), options)
    return sample_run(args.run, args.out, changes=changes, classes=_classes(args.labels), per_class=args.per_class,
                      seed=args.seed, use_ema=not args.no_ema, write_pngs=not args.no_png, overwrite=args.overwrite,
                      dist=dist)


def _classes(text: str | None) -> list[int] | None:
    """--labels: comma-separated class indices (None: every class)."""
    if not text:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--labels must be comma-separated class indices, got {text!r}") from None


def _sampler_steps(args: argparse.Namespace) -> int | None:
    """--sampler-steps, or its old spelling --steps (with a warning: on `compare`, --steps means
    training steps)."""
    if args.steps is not None:
        log.warning("--steps is now spelled --sampler-steps here (the sampler's steps; `ccua compare --steps` is "
                    "the training budget)")
    return args.sampler_steps if args.sampler_steps is not None else args.steps


# --------------------------------------------------------------------------- export

def cmd_export(args: argparse.Namespace) -> int:
    from ccua.generate import LoadedModel

    loaded = LoadedModel(args.run, use_ema=not args.no_ema)
    out = Path(args.out) if args.out else loaded.run_dir / "export" / f"step{loaded.step:07d}"
    folder = loaded.export(out)
    print(f"export: {folder} ({'EMA' if loaded.use_ema else 'raw'} weights of step {loaded.step}, "
          "model.safetensors + config.json)")
    return 0


# --------------------------------------------------------------------------- data

def cmd_data(args: argparse.Namespace) -> int:
    if args.config and args.config[0] == "encode":
        return cmd_data_encode(args.config[1:])
    # The config list is argparse.REMAINDER (for `data encode`): options after the preset land in it.
    parser = argparse.ArgumentParser(prog="ccua data")
    parser.add_argument("config", nargs="*")
    parser.add_argument("--verify", action="store_true")
    rest = parser.parse_args(args.config)
    preset, overrides = _split_preset(rest.config)
    config = _load(preset, overrides)
    from ccua.data import build_training_set, describe_classes

    if args.verify or rest.verify:
        _verify_data(config.data)
    print(describe_classes(build_training_set(config.data), config.data))
    return 0


def _verify_data(data) -> None:
    from ccua.data import DataError, verify_images

    checked, bad = verify_images(data)
    for path, reason in bad:
        print(f"unreadable: {path}: {reason}")
    if bad:
        raise DataError(f"{len(bad)} of {checked} image files cannot be read (listed above): delete or replace them")
    if checked:
        print(f"verified: all {checked} image files can be read")
    else:
        print(f"verified: {data.name} is decoded whole into memory when loaded, and it loaded")


def cmd_data_encode(argv: list[str]) -> int:
    parser = _Parser(prog="ccua data encode",
                     description="Encode a data set to VAE latents once, for latent training.")
    parser.add_argument("config", nargs="*", help="preset or YAML (the pixel data set), then key=value overrides")
    parser.add_argument("--out", required=True, help="latent cache file to write (.pt)")
    parser.add_argument("--vae", default=None, help="AutoencoderKL folder or hub name (default: data.vae)")
    parser.add_argument("--hflip-copies", action="store_true", help="also store latents of flipped images")
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--device", default=None)
    parser.add_argument("--allow-download", action="store_true", help="let diffusers fetch the VAE from the hub")
    args = parser.parse_args(argv)
    preset, overrides = _split_preset(args.config)
    config = _load(preset, overrides)
    from ccua.data import build_training_set
    from ccua.latent import encode_dataset, load_vae

    dataset = build_training_set(config.data)
    vae = load_vae(args.vae or config.data.vae, local_files_only=not args.allow_download)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    path = encode_dataset(dataset, vae.to(device), args.out, batch_size=args.batch_size,
                          hflip_copies=args.hflip_copies)
    print(f"latents: {path}")
    return 0


# --------------------------------------------------------------------------- evaluation

def cmd_evaluate(args: argparse.Namespace) -> int:
    from ccua.distributed import process_group
    from ccua.evaluation import evaluate_source
    from ccua.report import copies_table, format_table

    from ccua.config import sample_changes, section_overrides
    from ccua.evaluation import evaluation_data

    overrides = section_overrides(args.overrides, ("data", "sample"), "evaluate")
    data = evaluation_data(args.source, args.data, [o for o in overrides if o.startswith("data.")])
    with process_group(args.device) as dist:  # one process, or the processes of torchrun / srun sharing the work
        result, out = evaluate_source(
            args.source, args.out, features=args.features, feature_path=args.feature_path,
            reference_split=args.reference, per_class=args.per_class, sampler=args.sampler,
            steps=_sampler_steps(args), sample_changes=sample_changes(overrides),
            guidance=args.guidance, seed=args.seed, use_ema=not args.no_ema, group_mode=args.groups,
            bf16=args.bf16, allow_download=args.allow_download, data=data, max_reference=args.max_reference,
            reference_stats=args.reference_stats, memorisation=not args.no_memorisation, dist=dist)
    if result is None:  # not process 0: the numbers are printed there
        return 0
    print(format_table(result, per_class=args.show_classes))
    print("\n".join(copies_table(result.get("memorisation"))))
    print(f"metrics: {out / 'metrics.json'}")
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from ccua.metrics.weights import default_classifier_path
    from ccua.metrics import train_classifier

    preset, overrides = _split_preset(args.config)
    config = _load(preset, overrides)
    out = Path(args.out) if args.out else default_classifier_path(config.data)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = train_classifier(config.data, out, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                            device=args.device)
    print(f"classifier: {out}  test accuracy {meta['test_accuracy']:.4f}  "
          f"({meta.get('train_seconds', float('nan')):.0f} s)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ccua.report import make_report

    names = args.names.split(",") if args.names else None
    paths = make_report(args.runs, args.out, names=names, seeds_grouping=args.group, baseline=args.baseline)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    if "markdown" in paths:
        print(Path(paths["markdown"]).read_text())
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ccua.compare import compare, study_settings

    given = {
        "seeds": [int(s) for s in args.seeds.split(",")] if args.seeds else None, "steps": args.steps,
        "out_dir": Path(args.out) if args.out else None, "per_class": args.per_class, "features": args.features,
        "feature_path": args.feature_path, "guidance": args.guidance,
        "guidance_grid": [float(w) for w in args.guidance_grid.split(",")] if args.guidance_grid else None,
        "proxy_per_class": args.proxy_per_class, "sampler_steps": args.sampler_steps, "tail_seeds": args.tail_seeds,
        "max_reference": args.max_reference, "references": args.references.split(",") if args.references else None,
        "baseline": args.baseline, "jobs": args.jobs, "gpus_per_run": args.gpus_per_run, "device": args.device,
    }
    only = args.only.split(",") if args.only else None
    methods = [m for m in args.methods.split(",") if m] if args.methods else None
    settings = study_settings(args.preset, only=only, methods=methods, overrides=args.overrides, **given)
    if args.status:
        print(_status_table(settings))
        return 0
    report = compare(settings)
    print((report / "comparison.md").read_text())
    print(f"report: {report}")
    return 0


def _status_table(settings: CompareSettings) -> str:
    """``ccua compare --status``: a line per planned run, and what is left to train."""
    from ccua.compare import study_status, training_time_left
    from ccua.report.markdown import markdown

    statuses = study_status(settings)
    rows = [[s.name, f"{s.trained_step}/{s.budget}", s.state, str(s.evaluations),
             "-" if s.seconds_per_step is None else f"{s.seconds_per_step:.3g}"] for s in statuses]
    left = sum(s.steps_left for s in statuses)
    finished = sum(s.is_trained for s in statuses)
    summary = f"{finished} of {len(statuses)} runs trained; {left} training steps left"
    seconds = training_time_left(statuses, settings.jobs) if left else None
    if seconds is not None:
        jobs = f"{settings.jobs} job{'s' if settings.jobs > 1 else ''}"
        summary += (f", about {seconds / 3600:.1f} h at {jobs} side by side (at the logged step times; a run "
                    "not started at its variant's, else at the mean)")
    return (markdown(["run", "trained", "state", "evaluations", "s/step"], rows)
            + f"\n\n{summary} ({settings.out_dir})")


# --------------------------------------------------------------------------- the parser
# Every list of valid values below is asked of its registry (objectives' samplers, feature
# networks, group modes, data splits, seed groupings), never written out here.

class _Names:
    """A registry's names as argparse choices, read only when argparse needs them (to check a
    value given, or to show a command's help), so that `ccua --help` does not load torch."""

    def __init__(self, names: Callable[[], Iterable[str]]):
        self._names = names

    def __contains__(self, value: object) -> bool:
        return value in tuple(self._names())

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._names()))


def _samplers() -> tuple[str, ...]:
    from ccua.diffusion import sampler_names

    return sampler_names()


def _feature_nets() -> Iterable[str]:
    from ccua.metrics import FEATURE_NETS

    return FEATURE_NETS


def _group_modes() -> tuple[str, ...]:
    from ccua.data import GROUP_MODES

    return GROUP_MODES


def _splits() -> tuple[str, ...]:
    from ccua.data import SPLITS

    return SPLITS


def _seed_groupings() -> Iterable[str]:
    from ccua.report.tables import SEED_GROUPINGS

    return SEED_GROUPINGS


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train from a preset or YAML config with key=value overrides")
    p.add_argument("config", nargs="*", help=f"preset ({', '.join(preset_names())}) or YAML path, then overrides "
                                             "such as train.lr=1e-4 train.batch_size=32")
    p.add_argument("--resume", default=None,
                   help='"auto" (continue the newest run of this name if it has a checkpoint, else start it: the '
                        'same command for the first launch and every requeue), "latest", a run folder or a '
                        'checkpoint file')
    p.add_argument("--run-dir", default=None,
                   help="train in exactly this folder instead of a new numbered one (with --resume auto: continue "
                        "it if it has a checkpoint)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and stop")
    p.add_argument("--verify", action="store_true",
                   help="first open every image file once (as `ccua data --verify`); stop if any cannot be read")
    p.set_defaults(func=cmd_train)


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="sample a trained run or checkpoint")
    p.add_argument("run", help="run folder or checkpoint file")
    p.add_argument("--out", default=None, help="output folder (default: RUN/samples/<settings>)")
    p.add_argument("--sampler", default=None, choices=_Names(_samplers), metavar="SAMPLER",
                   help="%(choices)s: one of the run's objective (an error names the ones that fit)")
    p.add_argument("overrides", nargs="*",
                   help="sample.* overrides, e.g. sample.clip_x0=true sample.<sampler>.<setting>=...")
    p.add_argument("--sampler-steps", type=positive_int, default=None, help="the sampler's number of steps")
    p.add_argument("--steps", type=positive_int, default=None, help=argparse.SUPPRESS)  # old spelling
    p.add_argument("--eta", type=float, default=None, help=argparse.SUPPRESS)  # old spelling of DDIM's eta
    p.add_argument("--guidance", type=float, default=None, help="w in eps_c + w (eps_c - eps_u)")
    p.add_argument("--per-class", type=positive_int, default=10, help="samples per class")
    p.add_argument("--labels", default=None, help="comma-separated classes (default: every class)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--no-png", action="store_true", help="only the .npz and the grid")
    p.add_argument("--overwrite", action="store_true", help="replace the samples in a non-empty --out folder")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_sample)


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="a run's weights as model.safetensors and its config as config.json")
    p.add_argument("run", help="run folder or checkpoint file")
    p.add_argument("--format", default="safetensors", choices=["safetensors"])
    p.add_argument("--out", default=None, help="output folder (default: RUN/export/step<N>)")
    p.add_argument("--no-ema", action="store_true", help="the raw weights instead of the EMA")
    p.set_defaults(func=cmd_export)


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="per-class counts after long-tail subsampling; `data encode` for latents")
    p.add_argument("config", nargs=argparse.REMAINDER, help="preset or YAML, then overrides")
    p.add_argument("--verify", action="store_true", help="open every image file once and list the unreadable ones")
    p.set_defaults(func=cmd_data)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="FID, KID, precision/recall, IS per group and class of a run or samples")
    p.add_argument("source", help="run folder, checkpoint, sample folder or a sample .npz (arr_0/arr_1 or "
                                  "images/labels)")
    p.add_argument("overrides", nargs="*",
                   help="data.* overrides of the reference data set (the run's own, or --data's) and sample.* "
                        "overrides of the sampler")
    p.add_argument("--out", default=None, help="output folder (default: RUN/eval/<settings> or SAMPLES/eval)")
    p.add_argument("--features", default="inception", choices=_Names(_feature_nets), metavar="NET",
                   help="feature network: %(choices)s (random: tests only)")
    p.add_argument("--feature-path", default=None, help="weights file of the feature network")
    p.add_argument("--per-class", type=positive_int, default=100, help="generated images per class when sampling a run")
    p.add_argument("--device", default=None)
    p.add_argument("--data", default=None, help="preset or YAML whose data set is the reference (default: the run's)")
    p.add_argument("--reference", default="train", choices=_Names(_splits), metavar="SPLIT",
                   help="balanced split to compare with: %(choices)s")
    p.add_argument("--reference-stats", default=None,
                   help="published FID statistics (.npz with mu, sigma) as the reference: overall FID only")
    p.add_argument("--groups", default="thirds", choices=_Names(_group_modes), metavar="MODE",
                   help="%(choices)s: head/body/tail thirds, or many/medium/few by training count")
    p.add_argument("--sampler", default=None, choices=_Names(_samplers), metavar="SAMPLER",
                   help="%(choices)s: one of the run's objective (an error names the ones that fit)")
    p.add_argument("--sampler-steps", type=positive_int, default=None, help="the sampler's number of steps")
    p.add_argument("--steps", type=positive_int, default=None, help=argparse.SUPPRESS)  # old spelling
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ema", action="store_true")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the feature network")
    p.add_argument("--max-reference", type=positive_int, default=None, help="cap the reference images (equal per class)")
    p.add_argument("--allow-download", action="store_true", help="fetch the standard Inception weights if missing")
    p.add_argument("--show-classes", action="store_true", help="also print the per-class table")
    p.add_argument("--no-memorisation", action="store_true",
                   help="skip the near-copy test against the training images (it reads the whole training set)")
    p.set_defaults(func=cmd_evaluate)


def _add_features(sub) -> None:
    p = sub.add_parser("features", help="`features train`: the domain classifier used as a fast feature network")
    p.add_argument("action", choices=["train"])
    p.add_argument("config", nargs="*", help="preset or YAML (its data set and resolution), then overrides")
    p.add_argument("--out", default=None, help="weights file (default: .cache/ccua/classifiers/<data>-<res>px.pt)")
    p.add_argument("--epochs", type=positive_int, default=3)
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_features)


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="one comparison of several evaluated runs: table, CSV, plots")
    p.add_argument("runs", nargs="+", help="metrics.json files or folders holding them")
    p.add_argument("--out", required=True)
    p.add_argument("--names", default=None, help="comma-separated display names (equal names = seeds of one method)")
    p.add_argument("--group", default="name", choices=_Names(_seed_groupings), metavar="GROUPING",
                   help="which runs are seeds of one setting: %(choices)s")
    p.add_argument("--baseline", default=None,
                   help="a setting's name: add every other setting's difference to it, paired over seeds")
    p.set_defaults(func=cmd_report)


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="train, evaluate and report several methods under one protocol")
    p.add_argument("preset", help="preset or YAML config shared by every run, or a study: a file (studies/*.yaml) or "
                                  "a shipped study's name (fashion_mnist_lt_memorising, fashion_mnist_lt_study)")
    p.add_argument("overrides", nargs="*", help="overrides shared by every run")
    p.add_argument("--methods", default=None, help="comma-separated (default plain,ccua); a+b combines methods")
    p.add_argument("--only", default=None, help="comma-separated variants of a study file to run and report")
    p.add_argument("--seeds", default=None, help="comma-separated (default 0)")
    p.add_argument("--steps", type=non_negative_int, default=None, help="training steps of every run")
    p.add_argument("--out", default=None, help="output folder (default runs/compare, or runs/<study name>)")
    p.add_argument("--features", default=None, choices=_Names(_feature_nets), metavar="NET",
                   help="feature network: %(choices)s (default inception; random: tests only)")
    p.add_argument("--feature-path", default=None, help="weights file of the feature network")
    p.add_argument("--per-class", type=positive_int, default=None, help="generated images per class (default 100)")
    p.add_argument("--device", default=None)
    p.add_argument("--guidance", type=float, default=None, help="one w for every method (default: each preset's)")
    p.add_argument("--guidance-grid", default=None, help="comma-separated w values to tune on a held-out proxy")
    p.add_argument("--proxy-per-class", type=positive_int, default=None)
    p.add_argument("--sampler-steps", type=positive_int, default=None)
    p.add_argument("--tail-seeds", type=non_negative_int, default=None, help="columns of the cross-run tail-class grid")
    p.add_argument("--max-reference", type=positive_int, default=None, help="cap the reference images (equal per class)")
    p.add_argument("--references", default=None, help="balanced reference splits, e.g. train,test (default train)")
    p.add_argument("--baseline", default=None, help="method the others are compared with (default: the first)")
    p.add_argument("--jobs", type=positive_int, default=None,
                   help="runs side by side, each with cores/jobs threads or its own GPU (default 1)")
    p.add_argument("--gpus-per-run", type=positive_int, default=None,
                   help="train each run under torchrun on this many GPUs of its own (jobs x G GPUs in all; "
                        "without CUDA: G CPU processes)")
    p.add_argument("--status", action="store_true",
                   help="print where each planned run stands in the output folder (trained steps, whether a "
                        "process is training it, stored evaluations) and exit without training")
    p.set_defaults(func=cmd_compare)


def build_parser() -> argparse.ArgumentParser:
    from ccua import __version__

    parser = _Parser(prog="ccua", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ccua {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_sample, _add_export, _add_data, _add_evaluate, _add_features, _add_report,
                _add_compare):
        add(sub)
    return parser


# --------------------------------------------------------------------------- entry point

def main(argv: list[str] | None = None) -> int:
    _setup_logging()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops filling a positional list at the first option: key=value overrides that come
    # after options (`ccua compare P --steps 5 train.lr=1e-3`) arrive here and are added back.
    attribute = "overrides" if hasattr(args, "overrides") else "config"
    if extra:
        if not hasattr(args, attribute) or any(item.startswith("-") or "=" not in item for item in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        setattr(args, attribute, list(getattr(args, attribute)) + extra)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("ccua: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the known user errors get one line, the rest a traceback
        if _is_user_error(error) and not os.environ.get("CCUA_DEBUG"):
            message = " ".join(str(error).split()) or type(error).__name__  # always one line
            print(f"ccua: error: {message}", file=sys.stderr)
            return 2
        raise


def _is_user_error(error: Exception) -> bool:
    """Errors whose message says what to change: bad settings or input, missing or unwritable
    files (an OS error naming its file), unreadable checkpoints, a diverged run."""
    from ccua.data.sources import DataError
    from ccua.distributed import PeerLost
    from ccua.jobs import JobsFailed
    from ccua.checkpoint import CheckpointError
    from ccua.training.trainer import TrainingDiverged

    if isinstance(error, OSError) and error.filename is not None:
        return True
    return isinstance(error, (ConfigError, DataError, CheckpointError, JobsFailed, TrainingDiverged, FileNotFoundError,
                              ValueError, PeerLost))


if __name__ == "__main__":
    sys.exit(main())
