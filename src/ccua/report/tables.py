"""Comparison tables of several runs' metrics.json: one row per run, mean and std over seeds."""

from __future__ import annotations

import csv
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ccua.files import atomic_file
from ccua.metrics.subset_metrics import registered_columns
from ccua.report.markdown import markdown
from ccua.report.metrics_files import load_metrics, sampling_description
from ccua.report.stats import PairedDifference, paired_difference

logger = logging.getLogger(__name__)

PROVENANCE_COLUMNS = ("step", "ema", "sampler", "steps", "guidance", "seed", "feature_net", "reference")


def overall_metrics() -> list[tuple[str, str]]:
    """(metrics.json key, table column) of every registered metric, in report order."""
    return [(column.key, column.name) for column in registered_columns()]


def group_metrics() -> list[tuple[str, str]]:
    """(metrics.json key, table column) of the registered metrics computed per group."""
    return [(column.key, column.name) for column in registered_columns(per_group=True)]

#: from metrics.json "memorisation": the share of generated images that are near-copies of a training
#: image, and the median nearest / second-nearest distance ratio (lower = closer to copies)
COPY_METRICS = (("copy_share", "copies"), ("median_ratio", "nn_ratio"), ("distinct_nearest", "distinct_nn"))
#: from its "whole_set" part: the same test against every training image, not only the class's
WHOLE_SET_COPY_METRICS = (("copy_share", "copies_any"),)
_SEED_SUFFIX = re.compile(r"[-_.]?(seed|s)[-_]?\d+$", re.IGNORECASE)


@dataclass
class Run:
    """One evaluated run: a display name, its metrics.json and the parsed contents."""

    name: str
    path: Path
    metrics: dict[str, Any]


def find_metrics_file(path: str | Path) -> Path:
    """``path`` itself if it is a file; for a folder the newest ``**/metrics.json`` below it."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is neither a metrics.json file nor a folder")
    found = sorted(path.glob("**/metrics.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no metrics.json under {path} (run the evaluation first)")
    return found[-1]


def _default_name(path: Path, metrics_file: Path) -> str:
    """The run folder's name: the folder given, or the file's grandparent (run/eval/metrics.json)."""
    if path.is_dir():
        return path.resolve().name
    parent = metrics_file.resolve().parent
    return parent.parent.name if parent.name in ("eval", "evaluation", "metrics") else parent.name


def load_runs(inputs: list[str | Path], names: list[str] | None = None) -> list[Run]:
    if names is not None and len(names) != len(inputs):
        raise ValueError(f"{len(inputs)} runs but {len(names)} names")
    runs = []
    for i, item in enumerate(inputs):
        file = find_metrics_file(item)
        name = names[i] if names is not None else _default_name(Path(item), file)
        runs.append(Run(name, file, load_metrics(file)))
    return runs


#: which runs are seeds of one setting, by name: -> the key two runs of one setting share (None: no group)
SEED_GROUPINGS: dict[str, Callable[[str], str | None]] = {
    "name": lambda name: name,  # the same name
    "strip_seed": lambda name: _SEED_SUFFIX.sub("", name) or name,  # the same up to a tag such as -seed1 / _s2
    "none": lambda name: None,  # never
}


def group_key(name: str, seeds_grouping: str | Callable[[str], str]) -> str | None:
    """The key of run ``name`` under ``seeds_grouping``: a :data:`SEED_GROUPINGS` name or a callable
    name -> key; runs with the same key are seeds of one setting."""
    if callable(seeds_grouping):
        return seeds_grouping(name)
    if seeds_grouping not in SEED_GROUPINGS:
        raise ValueError(f"seeds_grouping must be one of {', '.join(map(repr, SEED_GROUPINGS))} or a callable, "
                         f"got {seeds_grouping!r}")
    return SEED_GROUPINGS[seeds_grouping](name)


def group_names(runs: list[Run]) -> list[str]:
    """Union of the group names of all runs, in first-seen order."""
    seen: list[str] = []
    for run in runs:
        for name in run.metrics.get("group_order", list(run.metrics.get("groups", {}))):
            if name not in seen:
                seen.append(name)
    return seen


def run_row(run: Run, groups: list[str]) -> dict[str, Any]:
    """A flat row: name, source, provenance, overall metrics, and per group metrics and counts."""
    m = run.metrics
    provenance = m.get("provenance", {})
    row: dict[str, Any] = {"name": run.name, "source": str(run.path)}
    described = sampling_description(m)
    for key in PROVENANCE_COLUMNS:
        row[key] = described[key] if key in described else provenance.get(key)
    overall = m.get("overall", {})
    row["n_gen"], row["n_ref"] = overall.get("n_gen"), overall.get("n_ref")
    for key, column in overall_metrics():
        row[column] = overall.get(key)
    copies = m.get("memorisation") or {}
    whole = copies.get("whole_set") or {}
    for key, column in COPY_METRICS:
        row[column] = (copies.get("overall") or {}).get(key)
    for key, column in WHOLE_SET_COPY_METRICS:
        row[column] = (whole.get("overall") or {}).get(key)
    for group in groups:
        values = m.get("groups", {}).get(group, {})
        for key, column in group_metrics():
            row[f"{column}_{group}"] = values.get(key)
        for key, column in COPY_METRICS:
            row[f"{column}_{group}"] = (copies.get("groups", {}).get(group) or {}).get(key)
        for key, column in WHOLE_SET_COPY_METRICS:
            row[f"{column}_{group}"] = (whole.get("groups", {}).get(group) or {}).get(key)
        row[f"n_gen_{group}"], row[f"n_ref_{group}"] = values.get("n_gen"), values.get("n_ref")
    return row


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def metric_columns(groups: list[str]) -> list[str]:
    copy_metrics = COPY_METRICS + WHOLE_SET_COPY_METRICS
    columns = [column for _, column in overall_metrics() + list(copy_metrics)]
    for group in groups:
        columns += [f"{column}_{group}" for _, column in group_metrics() + list(copy_metrics)]
    return columns


def paired_rows(rows: list[dict[str, Any]], keys: list[str | None], baseline: str, columns: list[str],
                confidence: float = 0.95) -> dict[str, dict[str, PairedDifference | None]]:
    """For every setting but ``baseline``: per column, the paired difference to the baseline over
    the seeds both have (rows matched by their ``seed``), or None where no pair has the value."""
    by_key: dict[str, dict[Any, dict[str, Any]]] = {}
    for row, key in zip(rows, keys):
        if key is not None:
            by_key.setdefault(key, {})[row.get("seed")] = row
    base = by_key.get(baseline, {})
    out: dict[str, dict[str, PairedDifference | None]] = {}
    for key, runs in by_key.items():
        if key == baseline:
            continue
        out[key] = {}
        for column in columns:
            pairs = [(row[column], base[seed][column]) for seed, row in runs.items()
                     if seed in base and _is_number(row.get(column)) and _is_number(base[seed].get(column))]
            out[key][column] = (paired_difference([a for a, _ in pairs], [b for _, b in pairs], confidence)
                                if pairs else None)
    return out


def paired_markdown(differences: dict[str, dict[str, PairedDifference | None]], columns: list[str]) -> str:
    """One row per metric, one column per setting: mean difference [interval], or the verdict."""
    names = list(differences)
    rows = []
    for column in columns:
        cells = []
        for name in names:
            diff = differences[name].get(column)
            digits = 5 if _is_small(column) else 3 if abs(diff.mean if diff else 0) < 10 else 2
            cells.append("-" if diff is None else diff.describe(digits))
        if any(cell != "-" for cell in cells):
            rows.append([column] + cells)
    return markdown(["metric"] + names, rows)


def summary_rows(rows: list[dict[str, Any]], keys: list[str | None], columns: list[str]) -> list[dict[str, Any]]:
    """Mean and sample std (ddof 1) of each metric over the runs sharing a key (seeds)."""
    order: list[str] = []
    members: dict[str, list[dict[str, Any]]] = {}
    for row, key in zip(rows, keys):
        if key is None:
            continue
        if key not in members:
            order.append(key)
            members[key] = []
        members[key].append(row)
    out = []
    for key in order:
        group = members[key]
        summary: dict[str, Any] = {"name": key, "n_runs": len(group)}
        for column in columns:
            values = [r[column] for r in group if _is_number(r.get(column))]
            summary[f"{column}_mean"] = sum(values) / len(values) if values else None
            if len(values) > 1:
                mean = summary[f"{column}_mean"]
                summary[f"{column}_std"] = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
            else:
                summary[f"{column}_std"] = None
        out.append(summary)
    return out


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with atomic_file(path, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return path


def _is_small(column: str) -> bool:
    """A table column (or its per-group column) of a metric printed in scientific notation."""
    small = [c.name for c in registered_columns() if c.small]
    return any(column == name or column.startswith(f"{name}_") for name in small)


def _cell(value: Any, column: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if _is_small(column):
            return f"{value:.2e}"
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    return markdown(columns, [[_cell(row.get(c), c) for c in columns] for row in rows])


def summary_markdown(summary: list[dict[str, Any]], columns: list[str]) -> str:
    rows = []
    for row in summary:
        cells = [row["name"], str(row["n_runs"])]
        for column in columns:
            mean, std = row[f"{column}_mean"], row[f"{column}_std"]
            cells.append("-" if mean is None else _cell(mean, column) + ("" if std is None else f" ± {_cell(std, column)}"))
        rows.append(cells)
    return markdown(["name", "n_runs"] + columns, rows)


def comparability_notes(runs: list[Run]) -> list[str]:
    """Differences that make numbers of these runs not comparable (feature net, reference, n)."""
    notes = []
    for key, label in (("feature_net_weights_hash", "feature networks"), ("reference", "reference sets"),
                       ("reference_size", "reference sizes"), ("n_generated", "numbers of generated images"),
                       ("group_mode", "group definitions")):
        values = {str(run.metrics.get("provenance", {}).get(key)) for run in runs}
        if len(values) > 1:
            notes.append(f"the runs use different {label} ({', '.join(sorted(values))}): their numbers are not "
                         "directly comparable")
    return notes
