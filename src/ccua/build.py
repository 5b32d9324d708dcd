"""From a config to the parts of a run, for training and for sampling alike.

:mod:`ccua.config` is data only; this module sits above the registries and asks them:

- :func:`check_config`: every name a config uses exists in its registry (data sets, backbones,
  objectives and their samplers, methods and the choices of their settings, feature networks,
  optimizers), and the parts fit together (the sampler fits the objective, the methods the
  objective, the model the resolution), before any data is read;
- :func:`build_model`, :func:`build_objective`, :func:`build_methods`, :func:`build_optimizer`:
  each part built from its settings in one place, used by the trainer and by the sample loader.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch import nn

from ccua.config import (Config, ConfigError, DiffusionConfig, MethodConfig, ModelConfig, config_from_dict, load_config,
                         range_problems, with_changes, with_plugin_settings)
from ccua.data import data_set_names, is_latent
from ccua.diffusion import LABEL_DROP_MODES, OBJECTIVES, Objective, sampler_names
from ccua.methods import METHODS, PLAIN, Method, check_combination
from ccua.metrics import FEATURE_NETS
from ccua.models import BACKBONES
from ccua.reporters import reporter_problems

#: ``train.optimizer`` -> the optimizer class
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


# --------------------------------------------------------------------------- checks

def load_checked_config(preset_or_path: str | None = None, overrides: list[str] | None = None) -> Config:
    """A preset or YAML file with dotted overrides (:func:`ccua.config.load_config`), checked
    against the registries: what the command line trains, samples or evaluates with."""
    return check_config(load_config(preset_or_path, overrides))


def stored_config(values: dict) -> Config:
    """The config a checkpoint or a run folder's config.yaml recorded, checked like a new one.

    Settings it names under old names are moved to today's (:func:`ccua.config.upgrade_keys`)
    without a warning, so checkpoints of earlier versions load for sampling, evaluation and resume.
    """
    return check_config(config_from_dict(values, stored=True))


def check_config(config: Config) -> Config:
    """``config`` when every registry knows its names and its parts fit together, with the
    backbone's settings completed by the backbone (a named DiT size written into its depth and
    width, so config.yaml shows the architecture trained); else a ConfigError naming the first
    setting that does not, with the valid values."""
    config = with_plugin_settings(config)  # every plug-in is registered by now: its section is built and checked
    problems = itertools.chain(range_problems(config), _choice_problems(config), _method_problems(config),
                               _sampling_problems(config), reporter_problems(config.train.report_to))
    problem = next(problems, None)
    if problem is None:
        config = _with_complete_model(config)
        model = config.model
        problem = next(BACKBONES[model.arch].settings_problems(model.chosen_settings(), config.data.resolution), None)
    if problem is not None:
        raise ConfigError(problem)
    return config


def _with_complete_model(config: Config) -> Config:
    """``config`` with its backbone's settings completed by the backbone (a DiT's named size written
    into its depth and width); ConfigError where they conflict."""
    model = config.model
    section = model.chosen_settings()
    completed = BACKBONES[model.arch].complete_settings(section)
    if completed is section:
        return config
    return dataclasses.replace(config, model=with_changes(model, {model.arch: completed}))


def _choice_problems(config: Config) -> Iterator[str]:
    """Settings that name something: each must be one of its registry's names."""
    choices: dict[str, tuple[object, Iterable[str]]] = {
        "data.name": (config.data.name, data_set_names()),
        "model.arch": (config.model.arch, BACKBONES),
        "diffusion.objective": (config.diffusion.objective, OBJECTIVES),
        "diffusion.label_drop_mode": (config.diffusion.label_drop_mode, LABEL_DROP_MODES),
        "train.optimizer": (config.train.optimizer, OPTIMIZERS),
        "train.proxy_features": (config.train.proxy_features, FEATURE_NETS),
        "sample.sampler": (config.sample.sampler, sampler_names()),
    }
    for key, (value, valid) in choices.items():
        if value not in valid:
            yield f"{key}={value!r} is not one of: {', '.join(valid)}"


def _method_problems(config: Config) -> Iterator[str]:
    try:
        check_combination(list(config.method.names), config.diffusion.objective)
    except ValueError as error:
        yield f"method.names={config.method.names}: {error}"


def _one_of(names: Iterable[str]) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _sampling_problems(config: Config) -> Iterator[str]:
    """The sampler and its options fit the objective and the data."""
    sample, diffusion = config.sample, config.diffusion
    offered = OBJECTIVES[diffusion.objective].samplers
    if sample.sampler not in offered:
        owner = next(name for name, objective in OBJECTIVES.items() if sample.sampler in objective.samplers)
        yield f"sampler {sample.sampler!r} is for the {owner} objective; use {_one_of(offered)}"
    yield from OBJECTIVES[diffusion.objective].sampling_problems(diffusion.chosen_settings(), sample)
    if sample.clip_x0 and is_latent(config.data):
        yield "sample.clip_x0=true clips x0 to the pixel range [-1, 1]: latents are not bounded"


# --------------------------------------------------------------------------- parts

def build_model(config: ModelConfig, in_channels: int, num_classes: int, resolution: int) -> nn.Module:
    """The backbone ``config.arch``, from its section of settings, for data of the given shape and class count."""
    return BACKBONES[config.arch].from_config(config.chosen_settings(), in_channels, num_classes, resolution)


def training_footprint(config: ModelConfig, in_channels: int, num_classes: int, resolution: int, batch: int,
                       passes: int = 1) -> tuple[int, int]:
    """(parameters, bytes) of training the model at a per-process ``batch``, estimated without
    allocating it: the model is built and run once on PyTorch's meta device (shapes only). Bytes:
    fp32 weights, gradients, two Adam moments and the EMA copy, plus every module's output of
    ``passes`` forward passes (what backward keeps). A floor, not a bound: workspace and the
    allocator's slack come on top."""
    with torch.device("meta"):
        model = build_model(config, in_channels, num_classes, resolution)
        activations = 0

        def count(module, inputs, output):
            nonlocal activations
            for tensor in output if isinstance(output, (tuple, list)) else (output,):
                if isinstance(tensor, torch.Tensor):
                    activations += tensor.numel()

        hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
        try:
            x = torch.zeros(batch, in_channels, resolution, resolution)
            model(x, torch.zeros(batch, dtype=torch.long), torch.zeros(batch, dtype=torch.long))
        finally:
            for hook in hooks:
                hook.remove()
    parameters = sum(p.numel() for p in model.parameters())
    return parameters, 4 * (5 * parameters + passes * activations)


def available_memory(device: torch.device) -> int | None:
    """Bytes free for a new allocation on ``device`` (the GPU's free memory, or the machine's
    available RAM); None where it cannot be told."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_model_fits(config: Config, in_channels: int, num_classes: int, resolution: int, batch: int,
                     device: torch.device) -> None:
    """ConfigError, with the estimate, when training ``config``'s model cannot fit the free memory
    of ``device`` (:func:`training_footprint`), before anything is allocated."""
    passes = 1 + len({p for method in build_methods(config.method) for p in method.passes})
    parameters, needed = training_footprint(config.model, in_channels, num_classes, resolution, batch, passes)
    free = available_memory(device)
    if free is not None and needed > free:
        raise ConfigError(f"the {config.model.arch} of these model.{config.model.arch}.* settings has "
                          f"{parameters / 1e6:.1f}M parameters; training it at {batch} images per process needs "
                          f"at least {needed / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB free on "
                          f"{device.type}: make the model smaller or lower train.batch_size")


def build_objective(config: DiffusionConfig) -> Objective:
    """The objective ``config.objective`` from its section of settings (none for an objective without)."""
    return OBJECTIVES[config.objective].from_config(config.chosen_settings())


def build_methods(config: MethodConfig) -> list[Method]:
    """The methods listed in ``config.names``, each with its section of settings (none for plain)."""
    return [METHODS[name](config.settings_of(name)) for name in config.names if name != PLAIN]


def build_optimizer(parameters: Iterable[nn.Parameter], name: str, lr: float, weight_decay: float,
                    device: torch.device) -> torch.optim.Optimizer:
    """Adam or AdamW; the fused CUDA kernel on GPUs (the same update, one launch for all tensors)."""
    extra = {"fused": True} if device.type == "cuda" else {}
    return OPTIMIZERS[name](parameters, lr=lr, weight_decay=weight_decay, **extra)
