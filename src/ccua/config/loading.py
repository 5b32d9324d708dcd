"""From YAML files, presets, mappings and dotted overrides to a checked :class:`Config`."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ccua.config.checks import build_section, range_problems, section_problems
from ccua.config.history import STORED_DEFAULTS, get_dotted, set_dotted, upgrade_keys
from ccua.config.schema import Config, ConfigError


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
            if not get_dotted(values, key)[0]:
                set_dotted(values, key, value)
    return _merge(Config().to_dict(), values)


def section_from_dict(cls: type, values: dict[str, Any], source: str) -> Any:
    """A settings dataclass other than :class:`Config` (e.g. a study file's) from a mapping read
    from ``source``: the same key, type and range checks as a config's; ConfigError naming ``source``."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: a mapping is needed at the top level, got {type(values).__name__}")
    try:
        section = build_section(cls, values)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None
    problem = next(section_problems(section, ""), None)
    if problem is not None:
        raise ConfigError(f"{source}: {problem}")
    return section


def config_from_dict(values: dict[str, Any], stored: bool = False) -> Config:
    """A :class:`Config` from a (possibly partial) nested mapping: keys, types and ranges checked.

    ``stored``: the mapping was written by an earlier run (a checkpoint, a run's config.yaml), so
    settings under old names are moved without a warning (see :func:`upgrade_keys`).
    """
    merged = with_defaults(values, stored)
    config = build_section(Config, merged)
    problem = next(range_problems(config), None)
    if problem is not None:
        raise ConfigError(problem)
    return config


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


def sample_changes(overrides: list[str], options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The sampler settings that the ``sample.*`` items of ``overrides`` set, with ``options``
    (sampler settings by name from command-line options, None = not given) winning over an override
    of the same name, as one typed and range-checked set: an option and an override that name one
    setting under its old and new names must agree."""
    wanted = [o for o in overrides if o.split("=", 1)[0].strip().startswith("sample.")]
    given = {name: value for name, value in (options or {}).items() if value is not None}
    return sample_settings_changes({**parse_overrides(wanted).get("sample", {}), **given},
                                   "command line" if given else "overrides")


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
