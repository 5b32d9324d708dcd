"""Checking values: YAML values against the fields' types, plug-in sections against the
registry, and every setting against the valid values written beside it."""

from __future__ import annotations

import math
from dataclasses import fields, is_dataclass
from typing import Any, Iterator, get_args, get_origin, get_type_hints

from ccua.config.history import copy_nested
from ccua.config.schema import PLUGIN_SETTINGS, Config, ConfigError, plugins_field


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
        return build_section(annotation, value, path)
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


def build_section(cls: type, values: dict[str, Any], path: str = "") -> Any:
    """The settings dataclass ``cls`` from a mapping at ``path``: unknown keys (with the valid ones)
    and types refused; plug-in sub-sections built by their registered class."""
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
            sections[name] = copy_nested(value)
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
    config = build_section(Config, config.to_dict())
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




def range_problems(config: Config) -> Iterator[str]:
    """One message per setting outside the values declared beside it (:func:`setting`), and per
    combination a section's ``problems()`` refuses."""
    yield from _non_finite_problems(config.to_dict())
    yield from section_problems(config, "")


def _non_finite_problems(values: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """NaN or infinite numbers anywhere in the config (no setting means anything with them)."""
    for key, value in values.items():
        if isinstance(value, dict):
            yield from _non_finite_problems(value, f"{prefix}{key}.")
        elif isinstance(value, float) and not math.isfinite(value):
            yield f"{prefix}{key}={value} must be a finite number"


def section_problems(section: Any, path: str) -> Iterator[str]:
    """Messages for values of ``section`` (and its sub-sections) outside their declared valid values."""
    for item in fields(section):
        value = getattr(section, item.name)
        key = f"{path}.{item.name}" if path else item.name
        if "plugins" in item.metadata:
            for name, sub in value.items():
                if is_dataclass(sub):
                    yield from section_problems(sub, f"{path}.{name}")
        elif is_dataclass(value):
            yield from section_problems(value, key)
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
