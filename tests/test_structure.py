"""The shape of the code: imports point one way, each list of valid names has one owner that the
CLI and the config checks ask, and functions stay short (docs/extending.md, "Conventions")."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
import sys
from pathlib import Path

import pytest

import ccua
from ccua.build import OPTIMIZERS, check_config
from ccua.cli import build_parser
from ccua.config import PLUGIN_SETTINGS, Config, ConfigError
from ccua.data import GROUP_MODES, SOURCES, SPLITS, data_set_names
from ccua.diffusion import LABEL_DROP_MODES, OBJECTIVES, DDPM, Flow, sampler_names
from ccua.diffusion.ddpm import ANCESTRAL_VARIANCES
from ccua.diffusion.solvers import SOLVERS
from ccua.methods import METHODS, PLAIN
from ccua.methods.ccua import NEGATIVES, WEIGHTINGS
from ccua.metrics import FEATURE_NETS
from ccua.metrics.subset_metrics import registered_columns
from ccua.models import BACKBONES
from ccua.report.tables import SEED_GROUPINGS

SRC = Path(ccua.__file__).parent

#: the layers of the package, lowest first: a module may import its own layer and those below,
#: never one above, not even inside a function
LAYERS = [
    {"config", "progress", "files"},
    {"devices", "images", "checkpoint", "exported", "runs", "records", "reporters", "jobs", "stopping", "latent",
     "launch", "distributed", "data", "models", "diffusion"},
    {"methods", "metrics", "report"},
    {"build"},
    {"training", "generate"},
    {"evaluation"},
    {"compare", "api"},
    {"cli", "__main__"},
]

#: a longer function says why in its docstring, in a sentence starting with this marker
LONG_FUNCTION_MARKER = "Long because"
MAX_FUNCTION_LINES = 60


# --------------------------------------------------------------------------- the import graph

def _modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _executed(target: str, importer: str) -> list[str]:
    """The modules ``import target`` runs: the target and its packages, except packages the
    importer itself lives in (they are already running when it imports)."""
    parts, own = target.split("."), importer.split(".")
    executed = []
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        if name in MODULES and not (i < len(parts) and own[:i] == parts[:i]):
            executed.append(name)
    return executed


def _imports(module: str, path: Path) -> set[str]:
    """Every ccua module ``module`` imports, at module level or inside a function."""
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - (node.level - 1) - (0 if is_package else 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            names = [source] + [f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in MODULES]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "ccua":
                targets.update(_executed(name, module))
    targets.discard(module)
    return targets


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return components


def _layer(module: str) -> int:
    top = module.split(".")[1]
    return next(i for i, layer in enumerate(LAYERS) if top in layer)


def test_the_graph_sees_module_and_function_level_imports():
    assert "ccua.build" in GRAPH["ccua.training.trainer"]  # module level
    assert "ccua.metrics" in GRAPH["ccua.training.trainer"]  # inside a method (the proxy FID)
    assert "ccua.data.sources" in GRAPH["ccua.data.dataset"]
    assert "ccua.data" not in GRAPH["ccua.data.dataset"]  # its own package is already running
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert _cycles(GRAPH) == []


def test_every_module_has_a_layer():
    unplaced = sorted({m.split(".")[1] for m in MODULES if m != "ccua"} - set().union(*LAYERS))
    assert unplaced == [], f"add {unplaced} to LAYERS in tests/test_structure.py"


def test_imports_point_down_the_layers():
    upward = [f"{module} imports {target}" for module, targets in sorted(GRAPH.items()) if module != "ccua"
              for target in sorted(targets) if target != "ccua" and _layer(target) > _layer(module)]
    assert upward == []


# --------------------------------------------------------------------------- short functions

def _long_functions(name: str, source: str) -> list[str]:
    """Functions of ``source`` longer than MAX_FUNCTION_LINES (def to last line, docstring
    included) whose docstring does not say why with LONG_FUNCTION_MARKER."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES and LONG_FUNCTION_MARKER not in (ast.get_docstring(node) or ""):
                found.append(f"{name}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_the_length_check_counts_lines_and_reads_the_marker():
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES - 2))
    short = f"def f():\n    \"\"\"Doc.\"\"\"\n{body}"  # exactly MAX_FUNCTION_LINES lines
    assert _long_functions("m.py", short) == []
    assert _long_functions("m.py", short + "    return x0\n") == [f"m.py:1 f ({MAX_FUNCTION_LINES + 1} lines)"]
    explained = short.replace("Doc.", f"Doc. {LONG_FUNCTION_MARKER} one table is clearer than six.")
    assert _long_functions("m.py", explained + "    return x0\n") == []


def test_functions_are_short_or_say_why():
    found = [line for path in sorted(SRC.rglob("*.py"))
             for line in _long_functions(str(path.relative_to(SRC.parent)), path.read_text())]
    assert found == []


# --------------------------------------------------------------------------- one owner per list of names

#: each list of valid names, and the one file that may write several of them in one literal
OWNERS = {
    "data/sources.py": set(SOURCES) | set(SPLITS),
    "data/longtail.py": set(GROUP_MODES),
    "models/__init__.py": set(BACKBONES),
    "diffusion/__init__.py": set(OBJECTIVES),
    "diffusion/ddpm.py": (set(DDPM.samplers) - set(SOLVERS)) | set(ANCESTRAL_VARIANCES),
    "diffusion/solvers.py": set(SOLVERS),
    "diffusion/flow.py": set(Flow.samplers),
    "diffusion/base.py": set(LABEL_DROP_MODES),
    "methods/__init__.py": set(METHODS) | {PLAIN},
    "methods/ccua.py": set(WEIGHTINGS) | set(NEGATIVES),
    "metrics/__init__.py": set(FEATURE_NETS),
    "metrics/subset_metrics.py": {name for column in registered_columns() for name in (column.key, column.name)},
    "build.py": set(OPTIMIZERS),
    "report/tables.py": set(SEED_GROUPINGS),
}


def _name_lists(tree: ast.AST):
    """String literals written together: tuples, lists, sets and the keys of dicts (a module's
    ``__all__`` lists Python names, not a registry's)."""
    exports = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Assign)
               and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)}
    for node in ast.walk(tree):
        if id(node) in exports:
            continue
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            items = node.elts
        elif isinstance(node, ast.Dict):
            items = [key for key in node.keys if key is not None]
        else:
            continue
        strings = {item.value for item in items if isinstance(item, ast.Constant) and isinstance(item.value, str)}
        if len(strings) >= 2:
            yield node.lineno, strings


def test_each_list_of_valid_names_is_written_once():
    copies = []
    for path in sorted(SRC.rglob("*.py")):
        where = str(path.relative_to(SRC))
        for line, strings in _name_lists(ast.parse(path.read_text())):
            for owner, names in OWNERS.items():
                if owner != where and len(strings & names) >= 2:
                    copies.append(f"{where}:{line} repeats names of {owner}: {sorted(strings & names)}")
    assert copies == []


def _choices(parser: argparse.ArgumentParser, command: str, option: str) -> tuple:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return tuple(next(a for a in sub._actions if option in a.option_strings).choices)


def test_the_cli_offers_what_the_registries_hold():
    parser = build_parser()
    assert _choices(parser, "sample", "--sampler") == _choices(parser, "evaluate", "--sampler") == sampler_names()
    assert sampler_names() == (*DDPM.samplers, *Flow.samplers)
    assert _choices(parser, "evaluate", "--features") == _choices(parser, "compare", "--features") == tuple(FEATURE_NETS)
    assert _choices(parser, "evaluate", "--groups") == GROUP_MODES
    assert _choices(parser, "evaluate", "--reference") == SPLITS
    assert _choices(parser, "report", "--group") == tuple(SEED_GROUPINGS)


def _with(config: Config, **sections) -> Config:
    return dataclasses.replace(config, **{name: dataclasses.replace(getattr(config, name), **values)
                                          for name, values in sections.items()})


def test_the_config_check_accepts_exactly_the_registered_names():
    base = Config()
    assert set(base.method.sections) == {name for name, method in METHODS.items() if method.settings is not None}
    for objective, cls in OBJECTIVES.items():
        for sampler in cls.samplers:
            check_config(_with(base, diffusion={"objective": objective}, sample={"sampler": sampler}))
        other = next(s for s in sampler_names() if s not in cls.samplers)
        with pytest.raises(ConfigError, match=f"sampler '{other}' is for the"):
            check_config(_with(base, diffusion={"objective": objective}, sample={"sampler": other}))
    for name in data_set_names():
        check_config(_with(base, data={"name": name}))
    for name in (PLAIN, *METHODS):
        check_config(_with(base, diffusion={"objective": "ddpm"}, method={"names": [name]}))
    for name in FEATURE_NETS:
        check_config(_with(base, train={"proxy_features": name}))
    for name in OPTIMIZERS:
        check_config(_with(base, train={"optimizer": name}))
    refused = [("data", "name", "imagenet"), ("train", "proxy_features", "clip"), ("train", "optimizer", "sgd"),
               ("diffusion", "label_drop_mode", "never"), ("sample", "sampler", "rk4"),
               ("model", "arch", "resnet"), ("diffusion", "objective", "edm")]
    for section, key, value in refused:
        with pytest.raises(ConfigError, match=f"{section}.{key}='{value}' is not one of"):
            check_config(_with(base, **{section: {key: value}}))
    for name, settings in base.method.sections.items():
        for item in dataclasses.fields(settings):
            if "choices" in item.metadata:
                valid = ", ".join(item.metadata["choices"])
                with pytest.raises(ConfigError, match=f"method.{name}.{item.name}='nope' is not one of: {valid}"):
                    check_config(_with(base, method={"sections": {
                        **base.method.sections, name: dataclasses.replace(settings, **{item.name: "nope"})}}))


def test_building_the_parser_loads_no_registry():
    """The registries import torch: `ccua --help` and option errors must not wait for it."""
    import subprocess
    import sys

    code = "import sys; from ccua.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# --------------------------------------------------------------------------- plug-ins own their settings

#: config/history.py's tables of settings' history (old key -> new key, stored defaults) name
#: sections by their dotted keys: they are read before any plug-in is imported, so they live there
_KEY_HISTORY = ("MOVED_KEYS", "STORED_DEFAULTS")


def _history_lines(text: str) -> set[int]:
    """The lines of ``text`` (config/history.py) inside the assignments of :data:`_KEY_HISTORY`."""
    lines: set[int] = set()
    for node in ast.parse(text).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id in _KEY_HISTORY
                                                for t in node.targets):
            lines.update(range(node.lineno, node.end_lineno + 1))
    return lines


def _plugin_settings_named_outside(sources: dict[str, str]) -> list[str]:
    """Lines of ``sources`` (module path -> text) naming a plug-in's settings section
    (``method.<name>``, ``sample.<name>``, ``model.<name>``, as a dotted key or an attribute chain)
    outside the plug-in's own modules (the one declaring its settings, and modules of the same
    package named after it, such as models/dit_release.py beside models/dit.py)."""
    found = []
    for group, plugins in PLUGIN_SETTINGS.items():
        for name, settings in plugins.items():
            own = Path(sys.modules[settings.__module__].__file__).relative_to(SRC)
            # ccua.<group>.<name> is a module path (ccua.diffusion.ddpm), not a settings section
            pattern = re.compile(rf"(?<!ccua\.)\b{group}\.{name}\b|sections\[['\"]{name}['\"]\]"
                                 rf"|sections\.get\(['\"]{name}['\"]")
            for where, text in sources.items():
                path = Path(where)
                if path.parent == own.parent and (path.stem == own.stem or path.stem.startswith(own.stem + "_")):
                    continue
                skipped = _history_lines(text) if where == "config/history.py" else set()
                found += [f"{where}:{i}: {line.strip()}" for i, line in enumerate(text.splitlines(), 1)
                          if i not in skipped and pattern.search(line)]
    return found


def test_a_plugins_settings_are_named_in_its_own_module_only():
    """A plug-in's settings live with it: ccua.config, build.py and the rest never name them, so a new
    data source, backbone, objective, sampler or method is its own file plus one registry line
    (docs/extending.md)."""
    sources = {str(path.relative_to(SRC)): path.read_text() for path in sorted(SRC.rglob("*.py"))}
    # every kind of plug-in with settings is seen by the check
    expected = {"data": {"image_folder"}, "model": {"unet", "dit"}, "diffusion": {"ddpm"},
                "method": {"ccua", "cbdm", "oclt", "dispersive"}, "sample": {"ddim", "ddpm", "dopri5"}}
    assert all(names <= set(PLUGIN_SETTINGS[group]) for group, names in expected.items())
    assert _plugin_settings_named_outside(sources) == []
    # the check sees a section named elsewhere, as a key and as an attribute
    planted = {"build.py": "if config.method.ccua.alpha > 1:", "compare.py": '"method.cbdm.tau=2"',
               "training/trainer.py": "if config.model.dit.init_from:",
               "config/history.py": 'MOVED_KEYS = {"model.ch": "model.unet.ch"}\nX = "model.unet.ch=8"',
               "config/schema.py": 'X = "model.unet.ch=8"',
               "generate.py": "from ccua.diffusion.ddpm import DDPM\nT = config.diffusion.ddpm.timesteps",
               "evaluation.py": "listed = data.image_folder.split_file"}
    assert len(_plugin_settings_named_outside(planted)) == 7
