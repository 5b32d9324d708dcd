"""Configuration: nested dataclasses, YAML presets and dotted command-line overrides.

Every setting lives here with its default, so a run folder's ``config.yaml`` is the complete
record of what was trained. Unknown keys are rejected with the list of valid ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

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


def config_from_dict(values: dict[str, Any]) -> Config:
    """Build and validate a :class:`Config` from a (possibly partial) nested mapping."""
    merged = _merge(Config().to_dict(), values or {})
    config = _build(Config, merged)
    validate(config)
    return config


def preset_names() -> list[str]:
    """Names of the presets shipped with the package."""
    folder = resources.files("ccua") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(name_or_path: str) -> dict[str, Any]:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        text = path.read_text()
    else:
        preset = resources.files("ccua") / "presets" / f"{name_or_path}.yaml"
        if not preset.is_file():
            raise ConfigError(
                f"no preset or YAML file named {name_or_path!r} "
                f"(presets: {', '.join(preset_names())})"
            )
        text = preset.read_text()
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{name_or_path} must hold a mapping at the top level")
    # A preset may build on another one.
    base_name = data.pop("base", None)
    if base_name:
        data = _merge(_read_yaml(base_name), data)
    return data


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["model.ch=64", "method.names=[ccua,cbdm]"]`` into a nested mapping."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else None
        parts = key.strip().split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override")
        node[parts[-1]] = value
    return nested


def load_config(preset_or_path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Load a preset (by name) or a YAML file, then apply dotted overrides."""
    values = _read_yaml(preset_or_path) if preset_or_path else {}
    values = _merge(values, parse_overrides(overrides or []))
    return config_from_dict(values)


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def validate(config: Config) -> None:
    """Reject settings that cannot work, before anything is loaded or trained."""
    from ccua.methods import check_combination  # local import: methods import config

    choices = {
        "data.name": (config.data.name, ("fashion_mnist", "mnist", "cifar10", "cifar100", "image_folder", "latents")),
        "model.arch": (config.model.arch, ("unet", "dit")),
        "diffusion.objective": (config.diffusion.objective, ("ddpm", "flow")),
        "diffusion.label_drop_mode": (config.diffusion.label_drop_mode, ("sample", "batch")),
        "train.optimizer": (config.train.optimizer, ("adam", "adamw")),
        "sample.sampler": (config.sample.sampler, ("ddim", "ddpm", "euler", "heun", "dopri5", "sde")),
        "method.ccua.weighting": (config.method.ccua.weighting, ("noise_level", "flow_time", "none")),
        "method.cbdm.prior": (config.method.cbdm.prior, ("empirical", "uniform")),
        "method.oclt.mode": (config.method.oclt.mode, ("t2h",)),
        "method.supcon.weighting": (config.method.supcon.weighting, ("noise_level", "flow_time", "none")),
    }
    for key, (value, valid) in choices.items():
        if value not in valid:
            raise ConfigError(f"{key}={value!r} is not one of: {', '.join(valid)}")
    try:
        check_combination(list(config.method.names), config.diffusion.objective)
    except ValueError as error:
        raise ConfigError(f"method.names={config.method.names}: {error}") from None
    if config.diffusion.objective == "ddpm" and config.sample.sampler not in ("ddim", "ddpm"):
        raise ConfigError(f"sampler {config.sample.sampler!r} is for the flow objective; use ddim or ddpm")
    if config.diffusion.objective == "flow" and config.sample.sampler in ("ddim", "ddpm"):
        raise ConfigError(f"sampler {config.sample.sampler!r} is for the ddpm objective; use euler, heun, dopri5 or sde")
    if config.data.imbalance is not None and not 0 < config.data.imbalance <= 1:
        raise ConfigError(f"data.imbalance must be in (0, 1], got {config.data.imbalance}")
    if config.data.balanced_resampling is not None and not 0 < config.data.balanced_resampling <= 1:
        raise ConfigError(f"data.balanced_resampling must be in (0, 1], got {config.data.balanced_resampling}")
    if config.train.batch_size < 1 or config.train.steps < 0:
        raise ConfigError("train.batch_size must be >= 1 and train.steps >= 0")
    ccua = config.method.ccua
    if not 0 < ccua.uncond_fraction <= ccua.ucl_fraction <= 1:
        raise ConfigError(f"method.ccua needs 0 < uncond_fraction <= ucl_fraction <= 1, got "
                          f"uncond_fraction={ccua.uncond_fraction}, ucl_fraction={ccua.ucl_fraction}")
    if not 0 <= config.diffusion.label_drop_prob < 1:
        raise ConfigError("diffusion.label_drop_prob must be in [0, 1)")
