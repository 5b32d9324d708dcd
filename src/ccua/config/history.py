"""Settings that moved: old keys read under their new names, and the values of settings added
after runs were stored."""

from __future__ import annotations

import logging
from typing import Any

from ccua.config.schema import ConfigError

log = logging.getLogger(__name__)


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
    values = copy_nested(values)
    moved = []
    for old, new in MOVED_KEYS.items():
        found, value = _pop_dotted(values, old)
        if not found:
            continue
        present, current = get_dotted(values, new)
        if present and current != value and not stored:
            raise ConfigError(f"{source}: {old}={value!r} and {new}={current!r} name the same setting ({old} is its "
                              f"old name): keep {new}")
        if not present:
            set_dotted(values, new, value)
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


def copy_nested(values: dict[str, Any]) -> dict[str, Any]:
    """A copy of a nested mapping whose mappings can be changed without touching the original."""
    return {k: copy_nested(v) if isinstance(v, dict) else v for k, v in values.items()}


def get_dotted(values: dict[str, Any], key: str) -> tuple[bool, Any]:
    """(present, value) of the dotted ``key`` in a nested mapping."""
    node: Any = values
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _pop_dotted(values: dict[str, Any], key: str) -> tuple[bool, Any]:
    *parents, last = key.split(".")
    present, node = get_dotted(values, ".".join(parents))
    if not present or not isinstance(node, dict) or last not in node:
        return False, None
    return True, node.pop(last)


def set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    """Set the dotted ``key`` of a nested mapping, making the mappings on its way."""
    *parents, last = key.split(".")
    node = values
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(parents)} must be a mapping, got {node!r}")
    node[last] = value
