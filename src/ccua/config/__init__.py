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

The package: ``schema`` (the sections and the plug-in registry), ``checks`` (types, plug-in
sections, valid values), ``history`` (settings that moved) and ``loading`` (YAML, presets,
overrides -> a checked config).
"""

from ccua.config.checks import build_section, range_problems, section_problems, with_plugin_settings
from ccua.config.history import DIT_SIZE_FIELDS, MOVED_KEYS, STORED_DEFAULTS, upgrade_keys
from ccua.config.loading import (MAX_YAML_CHARS, apply_overrides, config_from_dict, load_config, parse_overrides,
                                 parse_yaml, preset_names, read_yaml_file, sample_changes, sample_settings_changes,
                                 save_config, section_from_dict, section_overrides, with_defaults)
from ccua.config.schema import (PLUGIN_SETTINGS, Config, ConfigError, DataConfig, DiffusionConfig, MethodConfig,
                                ModelConfig, PluginSectionAccess, SampleConfig, TrainConfig, as_dict, plugin_sections,
                                plugins_field, register_settings, resumable_keys, sampler_settings, setting,
                                with_changes)

__all__ = [
    "DIT_SIZE_FIELDS", "MAX_YAML_CHARS", "MOVED_KEYS", "PLUGIN_SETTINGS", "STORED_DEFAULTS", "Config", "ConfigError",
    "DataConfig", "DiffusionConfig", "MethodConfig", "ModelConfig", "PluginSectionAccess", "SampleConfig",
    "TrainConfig", "apply_overrides", "as_dict", "build_section", "config_from_dict", "load_config",
    "parse_overrides", "parse_yaml", "plugin_sections", "plugins_field", "preset_names", "range_problems",
    "read_yaml_file", "register_settings", "resumable_keys", "sample_changes", "sample_settings_changes",
    "sampler_settings", "save_config", "section_from_dict", "section_overrides", "section_problems", "setting",
    "upgrade_keys", "with_changes", "with_defaults", "with_plugin_settings",
]
