"""Configuration: nested dataclasses, YAML presets and dotted command-line overrides.

Every setting lives in a dataclass with its default and its valid values (:func:`setting`), so a
run folder's ``config.yaml`` is the complete record of what was trained. The core sections are
here; a plug-in (a data source, a backbone, an objective, a method, a sampler) declares its
settings class in its own module and registers it (:func:`register_settings`), and the config gets
a section of that name (``data.<source>``, ``model.<arch>``, ``diffusion.<objective>``,
``method.<name>``, ``sample.<sampler>``). This
module is data only: unknown keys (with the list of valid ones), types and the ranges written
beside each field are checked here; whether a name exists (a data set, a sampler, ...) is asked
of its registry by :func:`ccua.build.check_config`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import re
from dataclasses import dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, get_args, get_origin, get_type_hints

import yaml

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration that cannot be used; the message says what to change."""


# --------------------------------------------------------------------------- declaring settings

def setting(default: Any = dataclasses.MISSING, *, factory: Any = None, at_least: float | None = None,
            above: float | None = None, at_most: float | None = None, below: float | None = None,
            choices: tuple[str, ...] | None = None, meaning: str = "", resumable: bool = False) -> Any:
    """A dataclass field with its valid values beside its default, checked with every config
    (:func:`range_problems`): bounds (``at_least`` / ``above`` below, ``at_most`` / ``below``
    above) or a fixed set of ``choices``; ``meaning`` (what the number counts) ends the message.
    None is always valid for an optional setting. ``resumable``: a resumed run may change it (it
    says where or how the same data is read, not what is trained; :func:`resumable_keys`)."""
    bounds = {"at_least": at_least, "above": above, "at_most": at_most, "below": below, "choices": choices}
    metadata: dict[str, Any] = {key: value for key, value in bounds.items() if value is not None}
    if meaning:
        metadata["meaning"] = meaning
    if resumable:
        metadata["resumable"] = True
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


#: plug-in settings by group: group -> plug-in name -> its settings class. A plug-in's own module
#: registers its class (:func:`register_settings`, through ``ccua.data.register_source``,
#: ``ccua.models.register_backbone``,
#: ``ccua.diffusion.register_objective`` / ``register_sampler`` or ``ccua.methods.register_method``);
#: the group's config section then has a sub-section of that name (``method.<name>.*``, ...).
PLUGIN_SETTINGS: dict[str, dict[str, type]] = {"data": {}, "model": {}, "diffusion": {}, "method": {}, "sample": {}}


def register_settings(group: str, name: str, settings: type) -> None:
    """Give the plug-in ``name`` of ``group`` the config section ``<group>.<name>`` of ``settings``
    (a dataclass whose fields are declared with :func:`setting`; an optional ``problems()``
    method yields messages for combinations of its values that cannot work)."""
    if not is_dataclass(settings):
        raise TypeError(f"the settings of {group} {name!r} must be a dataclass, got {settings!r}")
    PLUGIN_SETTINGS[group][name] = settings


def plugin_sections(group: str) -> Any:
    """The field of a section that holds one sub-section per registered plug-in of ``group``
    (written flat in YAML: ``method: {names: [ccua], ccua: {alpha: 1}}``)."""
    return field(default_factory=lambda: {name: cls() for name, cls in PLUGIN_SETTINGS[group].items()},
                 metadata={"plugins": group})


def resumable_keys() -> list[str]:
    """The dotted keys of every registered plug-in setting declared ``resumable`` (:func:`setting`)."""
    return [f"{group}.{name}.{item.name}" for group, plugins in PLUGIN_SETTINGS.items()
            for name, settings in plugins.items() for item in fields(settings) if item.metadata.get("resumable")]


def plugins_field(section: Any) -> dataclasses.Field | None:
    """The field of a section (class or instance) made by :func:`plugin_sections`, if it has one."""
    return next((f for f in fields(section) if "plugins" in f.metadata), None)


class PluginSectionAccess:
    """Attribute access to the plug-in sub-sections of a section: ``config.method.<name>``."""

    def __getattr__(self, name: str) -> Any:
        plugins = None if name.startswith("__") else plugins_field(self)  # type: ignore[arg-type]
        sections = self.__dict__.get(plugins.name) if plugins is not None else None
        if sections is not None and name in sections:
            return sections[name]
        raise AttributeError(f"{type(self).__name__} has no setting or plug-in section {name!r}")


@dataclass
class DataConfig(PluginSectionAccess):
    """Which images, how they are made long-tailed, and how batches are drawn. A registered source
    with settings of its own has its section here (``data.<source>``: an image folder's split files)."""

    name: str = "fashion_mnist"  # one of ccua.data.DATA_SETS: an image source, or "latents"
    root: str | None = None  # where the source files are; None = the source's default place
    download: bool = False  # fetch CIFAR from the internet when it is not at root
    resolution: int = setting(16, at_least=1, meaning="image side in pixels (latent grid side for latents)")
    # None = the source's own (1 for digits, 3 for colour)
    channels: int | None = setting(None, at_least=1, meaning="image channels")
    imbalance: float | None = setting(0.01, above=0, at_most=1)  # rho of the exponential profile; None = as is
    # images of the head class; None = the largest class of the source
    n_max: int | None = setting(None, at_least=1, meaning="images of the head class")
    longtail_seed: int = 0  # which images are kept within a class
    hflip: bool = False
    # rho_brs (0.1 in the paper); None = uniform over images
    balanced_resampling: float | None = setting(None, above=0, at_most=1)
    num_workers: int = setting(0, at_least=0, meaning="DataLoader worker processes")
    vae: str = "stabilityai/sd-vae-ft-ema"  # latents: the AutoencoderKL (local folder or hub cache)
    sections: dict[str, Any] = plugin_sections("data")


@dataclass
class ModelConfig(PluginSectionAccess):
    """The backbone: ``arch`` names it; each registered backbone's settings are the section of the
    same name (``model.<arch>``), declared in the backbone's own module."""

    arch: str = "unet"  # one of ccua.models.BACKBONES (unet, dit)
    sections: dict[str, Any] = plugin_sections("model")


@dataclass
class DiffusionConfig(PluginSectionAccess):
    """The training objective and classifier-free guidance training. Each registered objective
    with settings of its own (DDPM's schedule) has its section here (``diffusion.<objective>``),
    declared in the objective's module."""

    objective: str = "ddpm"  # one of ccua.diffusion.OBJECTIVES (ddpm, flow)
    label_drop_prob: float = setting(0.1, at_least=0, below=1)
    label_drop_mode: str = "sample"  # sample (one coin per image) | batch (one coin per step)
    sections: dict[str, Any] = plugin_sections("diffusion")


@dataclass
class MethodConfig(PluginSectionAccess):
    """Which methods are added to the denoising loss; they combine (e.g. [ccua, cbdm]). Each
    registered method has its settings section here, declared in its own module (``method.<name>``)."""

    names: list[str] = field(default_factory=lambda: ["ccua"])
    # one forward call on [x_t; x_t] (faster) or one call per pass
    batched_passes: bool = True
    sections: dict[str, Any] = plugin_sections("method")


@dataclass
class TrainConfig:
    """Optimisation, logging and checkpointing."""

    steps: int = setting(1000, at_least=0, meaning="optimiser steps to train to; 0 writes only the initial checkpoint")
    batch_size: int = setting(64, at_least=1, meaning="images per optimiser step, over all processes")
    # gradient accumulation: each process's share is run as this many micro-batches whose gradients
    # add up to one step; every loss then sees its micro-batch only (UCL's in-batch negatives too)
    accumulate: int = setting(1, at_least=1, meaning="micro-batches per optimiser step")
    optimizer: str = "adamw"  # one of ccua.build.OPTIMIZERS (adam, adamw)
    lr: float = setting(2e-4, above=0)
    weight_decay: float = setting(0.0, at_least=0)
    warmup_steps: int = setting(0, at_least=0, meaning="learning-rate warm-up steps")
    grad_clip: float | None = setting(1.0, above=0)
    ema_decay: float = setting(0.9999, at_least=0, at_most=1)
    ema_start: int = setting(0, at_least=0, meaning="step at which the EMA starts averaging")
    bf16: bool = False
    # speed settings (training/performance.py): TF32 on CUDA, channels-last memory, torch.compile
    tf32: bool = True
    channels_last: bool = False
    compile: bool = False
    seed: int = 0
    out_dir: str = "runs"
    log_every: int = setting(10, at_least=1, meaning="log the losses every N steps")
    sample_every: int = setting(0, at_least=0, meaning="a sample grid every N steps; 0 = only at the end")
    ckpt_every: int = setting(500, at_least=0, meaning="checkpoint every N steps; 0 = only at the end")
    keep_checkpoints: int = setting(3, at_least=0, meaning="newest checkpoints kept; 0 = all")
    progress: bool = True
    # where the losses, learning rate, proxy FID and sample grids go besides losses.jsonl:
    # tensorboard and/or wandb (Weights & Biases, optional: pip install wandb; project wandb_project)
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    wandb_project: str = "ccua"
    # Several processes: how long one waits in a collective for the others (process 0 alone
    # writes checkpoints and sample grids meanwhile) before the run stops with a timeout.
    dist_timeout_minutes: float = setting(30.0, above=0)
    # A cheap in-training FID (off by default): proxy_samples images, uniform over the classes,
    # with the fast feature network, every proxy_every steps, logged to TensorBoard.
    proxy_every: int = setting(0, at_least=0, meaning="proxy FID every N steps; 0 = off")
    proxy_samples: int = setting(500, at_least=1, meaning="samples of the proxy FID")
    proxy_features: str = "classifier"  # one of ccua.metrics.FEATURE_NETS
    proxy_feature_path: str | None = None  # default: the classifier `ccua features train` wrote
    proxy_sampler_steps: int = setting(20, at_least=1, meaning="sampler steps of the proxy FID")


@dataclass
class SampleConfig(PluginSectionAccess):
    """How samples are drawn (training-time grids and ``ccua sample``). A registered sampler with
    settings of its own has its section here (``sample.<sampler>``)."""

    sampler: str = "ddim"  # one of the objective's samplers (ddim, ddpm = ancestral; euler, heun, dopri5, sde)
    steps: int = setting(100, at_least=1, meaning="sampler steps")
    # DDPM objective's samplers (ddim, ddpm) on pixel data: clip the predicted x0 to [-1, 1] at every
    # step, with the epsilon re-derived from the clipped x0 so the update stays consistent; the
    # released samplers do not clip (false)
    clip_x0: bool = False
    # w in eps_c + w (eps_c - eps_u); 0 = plain conditional. w = -1 is the unconditional model; far
    # beyond 100 the guided prediction overflows
    guidance: float = setting(0.0, at_least=-1, at_most=100)
    # guide only the first k channels (SiT code's option)
    guidance_channels: int | None = setting(None, at_least=1, meaning="guided channels")
    use_ema: bool = True
    grid_per_class: int = setting(8, at_least=1, meaning="images per class in the sample grid")
    batch_size: int = setting(256, at_least=1, meaning="images per sampling batch")
    sections: dict[str, Any] = plugin_sections("sample")


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
        return as_dict(self)


def as_dict(section: Any) -> dict[str, Any]:
    """A settings dataclass as the nested mapping its YAML holds (plug-in sections written flat,
    beside the section's own settings)."""
    out: dict[str, Any] = {}
    for item in fields(section):
        value = getattr(section, item.name)
        if "plugins" in item.metadata:
            out.update({name: as_dict(sub) if is_dataclass(sub) else copy.deepcopy(sub) for name, sub in value.items()})
        elif is_dataclass(value):
            out[item.name] = as_dict(value)
        else:
            out[item.name] = copy.deepcopy(value)
    return out


def with_changes(section: Any, changes: dict[str, Any]) -> Any:
    """``dataclasses.replace`` of a section whose ``changes`` may also name its plug-in
    sub-sections (``{"guidance": 2.0, "mysampler": MySamplerConfig(...)}``)."""
    plugins = plugins_field(section)
    own = {f.name for f in fields(section)}
    sub = {name: value for name, value in changes.items() if name not in own}
    if sub and plugins is None:
        raise ConfigError(f"{type(section).__name__} has no setting(s) {sorted(sub)}")
    if sub:
        changes = {**{k: v for k, v in changes.items() if k in own},
                   plugins.name: {**getattr(section, plugins.name), **sub}}
    return dataclasses.replace(section, **changes)


def sampler_settings(sample: SampleConfig) -> dict[str, Any]:
    """The settings that decide a sample set's images: the shared ones and the chosen sampler's own
    section (other samplers' sections change nothing)."""
    others = set(sample.sections) - {sample.sampler}
    return {key: value for key, value in as_dict(sample).items() if key not in others}


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
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping, got {value!r}")
        return value
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
    plugins = plugins_field(cls)
    own = [f for f in fields(cls) if f is not plugins]
    registered = PLUGIN_SETTINGS[plugins.metadata["plugins"]] if plugins else {}
    valid = [f.name for f in own] + list(registered)
    kwargs: dict[str, Any] = {}
    sections: dict[str, Any] = {}
    unknown = []
    for name, value in values.items():
        where = f"{path}.{name}" if path else name
        if name in valid and name not in registered:
            kwargs[name] = _coerce(value, types[name], where)
        elif name in registered:
            sections[name] = _coerce(value, registered[name], where)
        elif plugins is not None and isinstance(value, dict):
            # a plug-in whose module is not imported yet: check_config, which knows every plug-in,
            # builds it (or refuses an unknown name) with :func:`with_plugin_settings`
            sections[name] = _copy_nested(value)
        else:
            unknown.append(name)
    if unknown:
        where = f"in '{path}' " if path else ""
        raise ConfigError(
            f"unknown config key {', '.join(repr(k) for k in unknown)} {where}"
            f"(valid keys: {', '.join(valid)})"
        )
    if plugins is not None:
        kwargs[plugins.name] = {**{name: settings() for name, settings in registered.items()}, **sections}
    return cls(**kwargs)


def with_plugin_settings(config: Config) -> Config:
    """``config`` with every plug-in section built by its registered settings class; a section
    read before its plug-in registered is a plain mapping until then. ConfigError for a section
    that no plug-in registered (a misspelt ``method.cuaa.alpha``)."""
    config = _build(Config, config.to_dict())
    for path, section in _sections_with_plugins(config):
        sections = getattr(section, plugins_field(section).name)
        unknown = [name for name, value in sections.items() if not is_dataclass(value)]
        if unknown:
            valid = [f.name for f in fields(section) if f is not plugins_field(section)]
            valid += [name for name in sections if name not in unknown]
            raise ConfigError(f"unknown config key {', '.join(repr(k) for k in unknown)} in '{path}' "
                              f"(valid keys: {', '.join(valid)})")
    return config


def _sections_with_plugins(section: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(path, section) of every section holding plug-in sub-sections."""
    if plugins_field(section) is not None:
        yield path, section
    for item in fields(section):
        value = getattr(section, item.name)
        if is_dataclass(value):
            yield from _sections_with_plugins(value, f"{path}.{item.name}" if path else item.name)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def with_defaults(values: dict[str, Any] | None, stored: bool = False) -> dict[str, Any]:
    """A (possibly partial, possibly older) config mapping completed with today's defaults, old
    key names moved to the new ones (:func:`upgrade_keys`); a stored config also gets the values
    its run was trained with for settings added since (:data:`STORED_DEFAULTS`)."""
    values = upgrade_keys(values or {}, "config", stored)
    if stored:
        for key, value in STORED_DEFAULTS.items():
            if not _get_dotted(values, key)[0]:
                _set_dotted(values, key, value)
    return _merge(Config().to_dict(), values)


def section_from_dict(cls: type, values: dict[str, Any], source: str) -> Any:
    """A settings dataclass other than :class:`Config` (e.g. a study file's) from a mapping read
    from ``source``: the same key, type and range checks as a config's; ConfigError naming ``source``."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: a mapping is needed at the top level, got {type(values).__name__}")
    try:
        section = _build(cls, values)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None
    problem = next(_section_problems(section, ""), None)
    if problem is not None:
        raise ConfigError(f"{source}: {problem}")
    return section


def config_from_dict(values: dict[str, Any], stored: bool = False) -> Config:
    """A :class:`Config` from a (possibly partial) nested mapping: keys, types and ranges checked.

    ``stored``: the mapping was written by an earlier run (a checkpoint, a run's config.yaml), so
    settings under old names are moved without a warning (see :func:`upgrade_keys`).
    """
    merged = with_defaults(values, stored)
    config = _build(Config, merged)
    problem = next(range_problems(config), None)
    if problem is not None:
        raise ConfigError(problem)
    return config


# --------------------------------------------------------------------------- settings that moved

#: old dotted key -> where the setting lives now. The data, model, diffusion and sample sections were
#: flat before the image folder, the backbones, DDPM and the samplers got sections of their own;
#: configs written then (checkpoints, config.yaml, presets and YAML files of users) are read with
#: these keys moved.
MOVED_KEYS = {
    **{f"model.{key}": f"model.unet.{key}" for key in ("ch", "ch_mult", "attn_resolutions", "num_res_blocks",
                                                       "dropout")},
    "model.dit_size": "model.dit.size",
    **{f"diffusion.{key}": f"diffusion.ddpm.{key}" for key in ("timesteps", "beta_start", "beta_end")},
    **{f"data.{key}": f"data.image_folder.{key}" for key in ("split_file", "test_split_file", "test_root",
                                                             "allow_outside_root", "max_image_pixels")},
    "sample.eta": "sample.ddim.eta",
    "sample.ddpm_variance": "sample.ddpm.variance",
    "sample.atol": "sample.dopri5.atol",
    "sample.rtol": "sample.dopri5.rtol",
    **{f"model.{key}": f"model.dit.{key}" for key in ("depth", "hidden_size", "num_heads", "patch_size", "mlp_ratio",
                                                      "encoder_depth")},
}
#: settings added after runs were already stored, with the value those runs were trained with
#: where it differs from today's default: a stored config without the key means this value
STORED_DEFAULTS = {"model.unet.null_embedding": "learned"}
#: the DiT settings a named size decides
DIT_SIZE_FIELDS = ("depth", "hidden_size", "num_heads", "patch_size", "mlp_ratio")
_warned_keys: set[str] = set()


def upgrade_keys(values: dict[str, Any], source: str, stored: bool = False) -> dict[str, Any]:
    """``values`` (a nested mapping) with settings under their old names (:data:`MOVED_KEYS`)
    moved to the new ones.

    User input (``stored=False``: a preset or YAML file, an override, a mapping given to
    :func:`config_from_dict`) gets a warning, once per old key, naming the new key; the same
    setting given under both names with different values is a ConfigError. Stored configs
    (checkpoints, the config.yaml of earlier runs) are moved silently, and where they name a DiT
    size, that size stands for their depth and width, as it did when they were trained.
    """
    values = _copy_nested(values)
    moved = []
    for old, new in MOVED_KEYS.items():
        found, value = _pop_dotted(values, old)
        if not found:
            continue
        present, current = _get_dotted(values, new)
        if present and current != value and not stored:
            raise ConfigError(f"{source}: {old}={value!r} and {new}={current!r} name the same setting ({old} is its "
                              f"old name): keep {new}")
        if not present:
            _set_dotted(values, new, value)
        if not stored and old not in _warned_keys:
            _warned_keys.add(old)
            moved.append(f"{old} -> {new}")
    if moved:
        log.warning("%s: settings renamed (read under the old names for now; write the new ones): %s", source,
                    ", ".join(moved))
    dit = values.get("model", {}).get("dit") if isinstance(values.get("model"), dict) else None
    if stored and isinstance(dit, dict) and dit.get("size") is not None:
        for key in DIT_SIZE_FIELDS:
            dit.pop(key, None)
    return values


def _copy_nested(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _copy_nested(v) if isinstance(v, dict) else v for k, v in values.items()}


def _get_dotted(values: dict[str, Any], key: str) -> tuple[bool, Any]:
    node: Any = values
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _pop_dotted(values: dict[str, Any], key: str) -> tuple[bool, Any]:
    *parents, last = key.split(".")
    present, node = _get_dotted(values, ".".join(parents))
    if not present or not isinstance(node, dict) or last not in node:
        return False, None
    return True, node.pop(last)


def _set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = values
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(parents)} must be a mapping, got {node!r}")
    node[last] = value


def preset_names() -> list[str]:
    """Names of the presets shipped with the package."""
    folder = resources.files("ccua") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml's C parser where installed
    """PyYAML's safe loader with YAML 1.2 numbers: ``1e-3`` and ``1e3`` are floats.

    YAML 1.1 (PyYAML's default) only reads a float with a dot, so ``lr: 1e-4`` would be the
    string "1e-4"; scientific notation without a dot is what users write on the command line.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))

#: the largest config, study or run file read (characters): configs are a few KB
MAX_YAML_CHARS = 1 << 20


def parse_yaml(text: str, source: str) -> Any:
    """YAML text -> Python values (safe types only); ConfigError naming ``source`` and the line.

    Config files are untrusted input: a file over :data:`MAX_YAML_CHARS` and aliases (``*name``,
    which let a few lines expand to gigabytes) are refused before anything is built.
    """
    if len(text) > MAX_YAML_CHARS:
        raise ConfigError(f"{source}: {len(text)} characters, more than a config file may hold ({MAX_YAML_CHARS})")
    try:
        for event in yaml.parse(text, Loader=_Loader):  # events only: an alias is refused before it expands
            if isinstance(event, yaml.AliasEvent):
                raise ConfigError(f"{source}: line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not "
                                  "allowed in config files; write the values out")
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a safe loader
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = error.problem or error.context or "syntax error"
        raise ConfigError(f"{source}: not valid YAML{where}: {what}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: not valid YAML: {error}") from None


def read_yaml_file(path: str | Path, what: str = "config file") -> Any:
    """The YAML of a file (:func:`parse_yaml`'s checks), its size checked before it is read."""
    path = Path(path)
    try:
        if path.stat().st_size > 4 * MAX_YAML_CHARS:
            raise ConfigError(f"{what} {path} is {path.stat().st_size} bytes, more than a config file may hold")
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read {what} {path}: {error}") from None
    return parse_yaml(text, str(path))


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
            if path.stat().st_size > 4 * MAX_YAML_CHARS:
                raise ConfigError(f"config file {path} is {path.stat().st_size} bytes, more than a config file "
                                  "may hold")
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
    data = upgrade_keys(data, identity)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{identity}: base must be a preset name or a YAML path, got {base!r}")
    return _merge(_read_yaml(base.strip(), own_folder, chain + (identity,)), data)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["train.lr=1e-4", "method.names=[ccua,cbdm]"]`` into a nested mapping."""
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
    values = _merge(values, upgrade_keys(parse_overrides(overrides or []), "overrides"))
    return config_from_dict(values)


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """``config`` with dotted overrides applied (keys, types and ranges checked)."""
    values = _merge(config.to_dict(), upgrade_keys(parse_overrides(overrides), "overrides"))
    return config_from_dict(values)


def section_overrides(overrides: list[str], sections: tuple[str, ...], command: str) -> list[str]:
    """``overrides`` when each names a setting of ``sections``; else a ConfigError (``ccua
    sample`` and ``ccua evaluate`` take sampler and data settings: the others change the
    training, which a trained run cannot)."""
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key.split(".")[0] not in sections:
            allowed = " and ".join(f"{section}.*" for section in sections)
            raise ConfigError(f"ccua {command} takes {allowed} overrides, got {key!r}: settings of the training "
                              "belong to `ccua train`")
    return overrides


def sample_changes(overrides: list[str]) -> dict[str, Any]:
    """The sampler settings that the ``sample.*`` items of ``overrides`` set, typed and range-checked."""
    wanted = [o for o in overrides if o.split("=", 1)[0].strip().startswith("sample.")]
    return sample_settings_changes(parse_overrides(wanted).get("sample", {}), "overrides")


def sample_settings_changes(values: dict[str, Any], source: str) -> dict[str, Any]:
    """``values`` (sampler settings by name, a sampler's own as a mapping: ``{"steps": 20, "ddim":
    {"eta": 1.0}}``) typed and range-checked, old names moved (:data:`MOVED_KEYS`), as changes
    for :func:`with_changes` of a :class:`SampleConfig`; a sampler's own section comes whole."""
    if not values:
        return {}
    moved = upgrade_keys({"sample": values}, source)["sample"]
    changed = config_from_dict({"sample": moved}).sample
    return {name: getattr(changed, name) for name in moved}


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def range_problems(config: Config) -> Iterator[str]:
    """One message per setting outside the values declared beside it (:func:`setting`), and per
    combination a section's ``problems()`` refuses."""
    yield from _non_finite_problems(config.to_dict())
    yield from _section_problems(config, "")


def _non_finite_problems(values: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """NaN or infinite numbers anywhere in the config (no setting means anything with them)."""
    for key, value in values.items():
        if isinstance(value, dict):
            yield from _non_finite_problems(value, f"{prefix}{key}.")
        elif isinstance(value, float) and not math.isfinite(value):
            yield f"{prefix}{key}={value} must be a finite number"


def _section_problems(section: Any, path: str) -> Iterator[str]:
    for item in fields(section):
        value = getattr(section, item.name)
        key = f"{path}.{item.name}" if path else item.name
        if "plugins" in item.metadata:
            for name, sub in value.items():
                if is_dataclass(sub):
                    yield from _section_problems(sub, f"{path}.{name}")
        elif is_dataclass(value):
            yield from _section_problems(value, key)
        elif value is not None and item.metadata:
            problem = _bound_problem(key, value, item.metadata)
            if problem:
                yield problem
    if hasattr(section, "problems"):
        yield from section.problems()


def _bound_problem(key: str, value: Any, bounds: Any) -> str | None:
    """The message for a value outside the bounds or choices declared with :func:`setting`."""
    meaning = f" ({bounds['meaning']})" if "meaning" in bounds else ""
    if "choices" in bounds:
        choices = bounds["choices"]
        return None if value in choices else f"{key}={value!r} is not one of: {', '.join(choices)}"
    low, high = bounds.get("at_least", bounds.get("above")), bounds.get("at_most", bounds.get("below"))
    inside = ((low is None or value > low or ("at_least" in bounds and value == low))
              and (high is None or value < high or ("at_most" in bounds and value == high)))
    if inside:
        return None
    if isinstance(value, int) and high is None and "at_least" in bounds:
        kind = "a positive integer" if low == 1 else f"an integer >= {low}"
        return f"{key}={value} must be {kind}{meaning}"
    if high is None:
        return f"{key}={value} must be {'>=' if 'at_least' in bounds else '>'} {low}{meaning}"
    if low is None:
        return f"{key}={value} must be {'<=' if 'at_most' in bounds else '<'} {high}{meaning}"
    opening, closing = "[" if "at_least" in bounds else "(", "]" if "at_most" in bounds else ")"
    return f"{key}={value} must be in {opening}{low}, {high}{closing}{meaning}"
