"""Configuration: nested dataclasses, YAML presets and dotted command-line overrides.

Every setting lives here with its default, so a run folder's ``config.yaml`` is the complete
record of what was trained. This module is data only: unknown keys (with the list of valid ones),
types and numeric ranges are checked here; whether a name exists (a data set, a method, a
sampler, ...) is asked of its registry by :func:`ccua.build.check_config`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, get_args, get_origin, get_type_hints

import yaml


class ConfigError(ValueError):
    """A configuration that cannot be used; the message says what to change."""


@dataclass
class DataConfig:
    """Which images, how they are made long-tailed, and how batches are drawn."""

    name: str = "fashion_mnist"  # fashion_mnist | mnist | cifar10 | cifar100 | image_folder | latents
    root: str | None = None  # where the source files are; None = the source's default place
    split_file: str | None = None  # image_folder: "relative/path label" lines (ImageNet-LT format)
    # image_folder: the test split in the same format (ImageNet_LT_test.txt): the balanced reference
    test_split_file: str | None = None
    download: bool = False  # fetch CIFAR from the internet when it is not at root
    resolution: int = 16
    channels: int | None = None  # None = the source's own (1 for digits, 3 for colour)
    imbalance: float | None = 0.01  # rho of the exponential profile; None = keep the source as it is
    n_max: int | None = None  # images of the head class; None = the largest class of the source
    longtail_seed: int = 0  # which images are kept within a class
    hflip: bool = False
    balanced_resampling: float | None = None  # rho_brs (0.1 in the paper); None = uniform over images
    num_workers: int = 0
    vae: str = "stabilityai/sd-vae-ft-ema"  # latents: the AutoencoderKL (local folder or hub cache)


@dataclass
class ModelConfig:
    """The backbone. U-Net fields apply to ``arch: unet``, DiT fields to ``arch: dit``."""

    arch: str = "unet"  # unet | dit
    ch: int = 128
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 2, 2])
    attn_resolutions: list[int] = field(default_factory=lambda: [16])
    num_res_blocks: int = 2
    dropout: float = 0.1
    # DiT / SiT
    dit_size: str | None = None  # a named size such as "SiT-S/2"; overrides the fields below
    depth: int = 4
    hidden_size: int = 128
    num_heads: int = 4
    patch_size: int = 2
    mlp_ratio: float = 4.0
    encoder_depth: str = "N/4"  # where encode() stops: N/8, N/4, N/2, 3N/4, N or a block count


@dataclass
class DiffusionConfig:
    """The training objective and classifier-free guidance training."""

    objective: str = "ddpm"  # ddpm | flow
    timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    label_drop_prob: float = 0.1
    label_drop_mode: str = "sample"  # sample (one coin per image) | batch (one coin per step)


@dataclass
class CCUAConfig:
    """SPEC section 5: L = L_dm + alpha * L_ucl + gamma * L_al."""

    alpha: float = 1.0
    gamma: float = 1.0
    temperature: float = 0.1
    # noise_level: weight s (1 = pure noise), the paper's intent; flow_time: the released SiT
    # code's weight by its own t, which up-weights low noise; none: weight 1.
    weighting: str = "noise_level"
    # The unconditional pass on a sub-batch (docs/methods.md, "Cheaper CCUA"): the encoder runs on
    # ucl_fraction of the rows (UCL), the decoder on uncond_fraction of them (AL), drawn in
    # proportion to the weight above and re-weighted. 1.0 / 1.0 = the exact published method.
    uncond_fraction: float = 1.0
    ucl_fraction: float = 1.0


@dataclass
class CBDMConfig:
    """Class-balancing diffusion: a second pass with labels from the class prior (docs/methods.md)."""

    tau: float = 1.0  # weight of the regulariser (the released default)
    prior: str = "empirical"  # empirical (released code) | uniform (paper's variant)


@dataclass
class OCLTConfig:
    """Oriented calibration: the epsilon target may be transferred from a sample of an
    at-least-as-frequent class of the same batch (docs/methods.md). DDPM objective only."""

    mode: str = "t2h"  # t2h: a tail sample may take a head sample's target, never the reverse


@dataclass
class DispersiveConfig:
    """Dispersive loss (InfoNCE-L2) on the encoder output of the conditional pass.

    Defaults are the PyTorch release (lambda 0.25, tau 1); the paper uses 0.5 / 0.5.
    """

    weight: float = 0.25  # lambda
    temperature: float = 1.0  # tau; distances are divided by D * tau


@dataclass
class SupConConfig:
    """Supervised-contrastive variant of UCL: positives are the samples of the same class."""

    weight: float = 1.0
    temperature: float = 0.1
    weighting: str = "noise_level"  # per-sample weight, as CCUA's: noise_level | flow_time | none


@dataclass
class MethodConfig:
    """Which methods are added to the denoising loss; they combine (e.g. [ccua, cbdm])."""

    names: list[str] = field(default_factory=lambda: ["ccua"])
    ccua: CCUAConfig = field(default_factory=CCUAConfig)
    cbdm: CBDMConfig = field(default_factory=CBDMConfig)
    oclt: OCLTConfig = field(default_factory=OCLTConfig)
    dispersive: DispersiveConfig = field(default_factory=DispersiveConfig)
    supcon: SupConConfig = field(default_factory=SupConConfig)
    # one forward call on [x_t; x_t] (faster) or one call per pass
    batched_passes: bool = True


@dataclass
class TrainConfig:
    """Optimisation, logging and checkpointing."""

    steps: int = 1000
    batch_size: int = 64  # global: split evenly over the processes
    optimizer: str = "adamw"  # adam | adamw
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    ema_decay: float = 0.9999
    ema_start: int = 0
    bf16: bool = False
    # speed settings (training/performance.py): TF32 on CUDA, channels-last memory, torch.compile
    tf32: bool = True
    channels_last: bool = False
    compile: bool = False
    seed: int = 0
    out_dir: str = "runs"
    log_every: int = 10
    sample_every: int = 0  # 0 = only at the end
    ckpt_every: int = 500
    keep_checkpoints: int = 3
    progress: bool = True
    # A cheap in-training FID (off by default): proxy_samples images, uniform over the classes,
    # with the fast feature network, every proxy_every steps, logged to TensorBoard.
    proxy_every: int = 0
    proxy_samples: int = 500
    proxy_features: str = "classifier"  # classifier | inception | random
    proxy_feature_path: str | None = None  # default: the classifier `ccua features train` wrote
    proxy_sampler_steps: int = 20


@dataclass
class SampleConfig:
    """How samples are drawn (training-time grids and ``ccua sample``)."""

    sampler: str = "ddim"  # ddim | ddpm (ancestral) | euler | heun | dopri5 | sde
    steps: int = 100
    eta: float = 0.0
    # DDPM objective only. clip_x0: clip the predicted x0 to [-1, 1] at every step, with the
    # epsilon re-derived from the clipped x0 so the update stays consistent; the released samplers
    # do not clip (false). ddpm_variance: the ancestral sampler's noise, "large" = beta_t (the
    # released U-Net code's fixedlarge, the default) or "posterior" = beta-tilde_t.
    clip_x0: bool = False
    ddpm_variance: str = "large"
    guidance: float = 0.0  # w in eps_c + w (eps_c - eps_u); 0 = plain conditional
    guidance_channels: int | None = None  # guide only the first k channels (SiT code's option)
    use_ema: bool = True
    grid_per_class: int = 8
    batch_size: int = 256
    atol: float = 1e-5
    rtol: float = 1e-5


@dataclass
class Config:
    """A whole run."""

    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _field_types(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _coerce(value: Any, annotation: Any, path: str) -> Any:
    """Check a YAML value against a field's annotation, converting ints to floats where needed."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if annotation is Any:
        return value
    if origin is None and is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping, got {value!r}")
        return _build(annotation, value, path)
    if args and type(None) in args:  # X | None
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], path)
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            if args and args[0] is str and isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            raise ConfigError(f"{path} must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} must be a number, got {value!r}")
        return float(value)
    if annotation is int:
        # 1e3 is a float in YAML; an integral float is the integer it names.
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} must be an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{path} must be a string, got {value!r}")
        return str(value)
    return value


def _build(cls: type, values: dict[str, Any], path: str = "") -> Any:
    types = _field_types(cls)
    valid = [f.name for f in fields(cls)]
    unknown = [k for k in values if k not in valid]
    if unknown:
        where = f"in '{path}' " if path else ""
        raise ConfigError(
            f"unknown config key {', '.join(repr(k) for k in unknown)} {where}"
            f"(valid keys: {', '.join(valid)})"
        )
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(value, types[name], f"{path}.{name}" if path else name)
    return cls(**kwargs)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def with_defaults(values: dict[str, Any] | None) -> dict[str, Any]:
    """A (possibly partial, possibly older) config mapping completed with today's defaults."""
    return _merge(Config().to_dict(), values or {})


def config_from_dict(values: dict[str, Any]) -> Config:
    """A :class:`Config` from a (possibly partial) nested mapping: keys, types and ranges checked."""
    merged = with_defaults(values)
    config = _build(Config, merged)
    problem = next(_range_problems(config), None)
    if problem is not None:
        raise ConfigError(problem)
    return config


def preset_names() -> list[str]:
    """Names of the presets shipped with the package."""
    folder = resources.files("ccua") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 numbers: ``1e-3`` and ``1e3`` are floats.

    YAML 1.1 (PyYAML's default) only reads a float with a dot, so ``lr: 1e-4`` would be the
    string "1e-4"; scientific notation without a dot is what users write on the command line.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def parse_yaml(text: str, source: str) -> Any:
    """YAML text -> Python values (safe types only); ConfigError naming ``source`` and the line."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = error.problem or error.context or "syntax error"
        raise ConfigError(f"{source}: not valid YAML{where}: {what}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: not valid YAML: {error}") from None


def _locate(name_or_path: str, folder: Path | None) -> tuple[str, str, Path | None]:
    """(identity, text, folder for its own ``base:``) of a YAML path or a preset name.

    A name ending in .yaml/.yml is a file: relative to ``folder`` (the folder of the file that
    names it in ``base:``) or, on the command line, to the working directory. Anything else is
    a preset shipped with the package.
    """
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if folder is not None and not path.is_absolute():
            path = folder / path
        if path.is_file():
            try:
                return str(path.resolve()), path.read_text(), path.resolve().parent
            except (OSError, UnicodeDecodeError) as error:
                raise ConfigError(f"cannot read config file {path}: {error}") from None
        if folder is not None:
            raise ConfigError(f"base: no YAML file {path} (a base path is relative to the including file's folder)")
    preset = resources.files("ccua") / "presets" / f"{name_or_path}.yaml"
    if not preset.is_file():
        raise ConfigError(f"no preset or YAML file named {name_or_path!r} (presets: {', '.join(preset_names())})")
    return f"preset {name_or_path}", preset.read_text(), None


def _read_yaml(name_or_path: str, folder: Path | None = None, chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """The mapping of a preset or YAML file, with its ``base:`` chain merged underneath."""
    identity, text, own_folder = _locate(name_or_path, folder)
    if identity in chain:
        raise ConfigError(f"base: cycle of config files: {' -> '.join(chain + (identity,))}")
    data = parse_yaml(text, identity) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{identity} must hold a mapping at the top level, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{identity}: base must be a preset name or a YAML path, got {base!r}")
    return _merge(_read_yaml(base.strip(), own_folder, chain + (identity,)), data)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["model.ch=64", "method.names=[ccua,cbdm]"]`` into a nested mapping."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r}: the key {key!r} must be dotted names such as train.lr")
        value = parse_yaml(raw, f"override {item!r}") if raw != "" else None
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override")
        node[parts[-1]] = value
    return nested


def load_config(preset_or_path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Load a preset (by name) or a YAML file, then apply dotted overrides (keys, types and ranges
    checked; :func:`ccua.build.load_checked_config` also asks the registries)."""
    values = _read_yaml(preset_or_path) if preset_or_path else {}
    values = _merge(values, parse_overrides(overrides or []))
    return config_from_dict(values)


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def _range_problems(config: Config) -> Iterator[str]:
    """One message per numeric setting outside the range where it means something."""
    data, model, diffusion, train, sample = config.data, config.model, config.diffusion, config.train, config.sample
    # (key, value, minimum, what it is): integers that count something
    at_least = [
        ("train.batch_size", train.batch_size, 1, "images per optimiser step, over all processes"),
        ("train.steps", train.steps, 0, "optimiser steps to train to; 0 writes only the initial checkpoint"),
        ("train.log_every", train.log_every, 1, "log the losses every N steps"),
        ("train.ckpt_every", train.ckpt_every, 0, "checkpoint every N steps; 0 = only at the end"),
        ("train.sample_every", train.sample_every, 0, "a sample grid every N steps; 0 = only at the end"),
        ("train.keep_checkpoints", train.keep_checkpoints, 0, "newest checkpoints kept; 0 = all"),
        ("train.warmup_steps", train.warmup_steps, 0, "learning-rate warm-up steps"),
        ("train.ema_start", train.ema_start, 0, "step at which the EMA starts averaging"),
        ("train.proxy_every", train.proxy_every, 0, "proxy FID every N steps; 0 = off"),
        ("train.proxy_samples", train.proxy_samples, 1, "samples of the proxy FID"),
        ("train.proxy_sampler_steps", train.proxy_sampler_steps, 1, "sampler steps of the proxy FID"),
        ("sample.batch_size", sample.batch_size, 1, "images per sampling batch"),
        ("sample.steps", sample.steps, 1, "sampler steps"),
        ("sample.grid_per_class", sample.grid_per_class, 1, "images per class in the sample grid"),
        ("data.resolution", data.resolution, 1, "image side in pixels (latent grid side for latents)"),
        ("data.num_workers", data.num_workers, 0, "DataLoader worker processes"),
        ("model.ch", model.ch, 1, "U-Net base channels"),
        ("model.num_res_blocks", model.num_res_blocks, 0, "U-Net residual blocks per level"),
        ("model.depth", model.depth, 1, "DiT blocks"),
        ("model.hidden_size", model.hidden_size, 1, "DiT width"),
        ("model.num_heads", model.num_heads, 1, "DiT attention heads"),
        ("model.patch_size", model.patch_size, 1, "DiT patch side"),
        ("diffusion.timesteps", diffusion.timesteps, 1, "DDPM steps T"),
    ]
    optional = [("data.n_max", data.n_max, 1, "images of the head class"),
                ("data.channels", data.channels, 1, "image channels"),
                ("sample.guidance_channels", sample.guidance_channels, 1, "guided channels")]
    for key, value, minimum, what in at_least + [o for o in optional if o[1] is not None]:
        if value < minimum:
            bound = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            yield f"{key}={value} must be {bound} ({what})"
    if not model.ch_mult or min(model.ch_mult) < 1:
        yield f"model.ch_mult={model.ch_mult} must be a non-empty list of positive integers"
    positive = [("train.lr", train.lr), ("model.mlp_ratio", model.mlp_ratio), ("sample.atol", sample.atol),
                ("sample.rtol", sample.rtol), ("method.ccua.temperature", config.method.ccua.temperature),
                ("method.supcon.temperature", config.method.supcon.temperature),
                ("method.dispersive.temperature", config.method.dispersive.temperature)]
    if train.grad_clip is not None:
        positive.append(("train.grad_clip", train.grad_clip))
    for key, value in positive:
        if not value > 0:
            yield f"{key}={value} must be > 0"
    for key, value in [("train.weight_decay", train.weight_decay), ("sample.eta", sample.eta)]:
        if value < 0:
            yield f"{key}={value} must be >= 0"
    intervals = [("train.ema_decay", train.ema_decay, 0, 1, "[0, 1]"),
                 ("model.dropout", model.dropout, 0, 1, "[0, 1)"),
                 ("diffusion.label_drop_prob", diffusion.label_drop_prob, 0, 1, "[0, 1)")]
    for key, value, low, high, shown in intervals:
        if not (low <= value < high or (shown.endswith("]") and value == high)):
            yield f"{key}={value} must be in {shown}"
    if not 0 < diffusion.beta_start <= diffusion.beta_end < 1:
        yield (f"diffusion.beta_start={diffusion.beta_start}, beta_end={diffusion.beta_end}: "
               "need 0 < beta_start <= beta_end < 1")
    for key, value in [("data.imbalance", data.imbalance), ("data.balanced_resampling", data.balanced_resampling)]:
        if value is not None and not 0 < value <= 1:
            yield f"{key} must be in (0, 1], got {value}"
    ccua = config.method.ccua
    if not 0 < ccua.uncond_fraction <= ccua.ucl_fraction <= 1:
        yield (f"method.ccua needs 0 < uncond_fraction <= ucl_fraction <= 1, got "
               f"uncond_fraction={ccua.uncond_fraction}, ucl_fraction={ccua.ucl_fraction}")
