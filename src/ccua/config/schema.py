"""The settings: one dataclass per config section, each field with its default and valid values.

Plug-ins (data sources, backbones, objectives, methods, samplers) register their settings classes
here (:func:`register_settings`); the sections that hold them build one sub-section per plug-in.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, ClassVar


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

    #: the setting that names the plug-in in use (``arch`` of ``model``); "" where several are
    chooser: ClassVar[str] = ""

    def settings_of(self, name: str) -> Any | None:
        """Plug-in ``name``'s own settings section; None where it registered none."""
        return getattr(self, plugins_field(self).name).get(name)  # type: ignore[arg-type, union-attr]

    def chosen_settings(self) -> Any | None:
        """The settings section of the plug-in in use (``model.<arch>``, ``data.<name>``, ...)."""
        if not self.chooser:
            raise TypeError(f"{type(self).__name__} uses several plug-ins at once: ask settings_of(name)")
        return self.settings_of(getattr(self, self.chooser))

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

    chooser = "name"
    name: str = "fashion_mnist"  # one of ccua.data.data_set_names(): an image source, or "latents"
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

    chooser = "arch"
    arch: str = "unet"  # one of ccua.models.BACKBONES (unet, dit)
    sections: dict[str, Any] = plugin_sections("model")


@dataclass
class DiffusionConfig(PluginSectionAccess):
    """The training objective and classifier-free guidance training. Each registered objective
    with settings of its own (DDPM's schedule) has its section here (``diffusion.<objective>``),
    declared in the objective's module."""

    chooser = "objective"
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

    chooser = "sampler"
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
