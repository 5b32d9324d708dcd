"""The files of one evaluation: ``metrics.json`` (every number with its provenance) and
``metrics.md`` (the tables), and reading them back."""

from __future__ import annotations

import json
import math
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ccua.files import write_text_atomic
from ccua.metrics.subset_metrics import Column, registered_columns
from ccua.report.markdown import markdown


def _jsonable(value: Any) -> Any:
    """Plain JSON types; NaN and infinities become null (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return _jsonable(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    return value


def library_versions() -> dict[str, str]:
    import scipy

    try:
        from importlib.metadata import version

        ccua_version = version("ccua")
    except Exception:  # not installed as a distribution
        ccua_version = "unknown"
    return {"torch": str(torch.__version__), "numpy": np.__version__, "scipy": scipy.__version__, "ccua": ccua_version,
            "python": platform.python_version()}


def _fmt(value: Any, digits: int = 2, scale: float = 1.0) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else ""
    return f"{value * scale:.{digits}f}"


def _metric_cell(row: dict[str, Any], column: Column) -> str:
    value = row.get(column.key)
    if value is None or column.spread is None:
        return _fmt(value, column.digits, column.scale)
    spread = row.get(column.spread) or 0.0
    return f"{value * column.scale:.{column.digits}f} ± {spread * column.scale:.{column.digits}f}"


def _row_cells(name: str, row: dict[str, Any]) -> list[str]:
    n_ref = "-" if row.get("n_ref") is None else row["n_ref"]
    cells = [_metric_cell(row, column) for column in registered_columns(per_group=True)]
    return ([name, f"{row['n_gen']}/{n_ref}"] + cells
            + ["yes" if row.get("rank_deficient") else ""])


def format_table(result: dict[str, Any], per_class: bool = True) -> str:
    """Markdown tables: overall and group rows (with n_gen/n_ref), then one row per class."""
    columns = registered_columns(per_group=True)  # metrics.md's subset tables: every metric computed per subset
    header = ["subset", "n_gen/n_ref"] + [column.header for column in columns] + ["rank-deficient"]
    rows = [_row_cells("overall", result["overall"])]
    skipped = {e["name"]: e for e in result["skipped"] if e["scope"] == "group"}
    for name in result.get("group_order", list(result["groups"]) + list(skipped)):
        if name in result["groups"]:
            row = result["groups"][name]
            rows.append(_row_cells(f"{name} ({len(row['classes'])} cl.)", row))
        elif name in skipped:
            entry = skipped[name]
            rows.append([f"{name} (skipped)", f"{entry['n_gen']}/{entry['n_ref']}"] + ["-"] * len(columns)
                        + [entry["reason"]])
    parts = [markdown(header, rows)]
    overall = result["overall"]
    for column in registered_columns():  # the whole set's only numbers (IS), one line each
        if not column.per_group and overall.get(column.key) is not None:
            parts.append(f"{column.header} ({result['feature_net']['name']} logits): {_metric_cell(overall, column)}")
    if per_class and result["per_class"]:
        class_header = ["class", "train count"] + header[1:]
        class_rows = []
        for row in result["per_class"]:
            cells = _row_cells(f"{row['class']} {row['name']}" if row["name"] != str(row["class"]) else str(row["class"]),
                               row)
            class_rows.append([cells[0], "-" if row["train_count"] is None else str(row["train_count"])] + cells[1:])
        parts.append(markdown(class_header, class_rows))
    return "\n\n".join(parts)


def copies_table(copies: dict[str, Any] | None) -> list[str]:
    """Markdown lines: the share of near-copies of training images overall and per group, within
    the class and against the whole training set, and the distinct training images hit."""
    if not copies:
        return []
    whole = copies.get("whole_set") or {}
    whole_rows = {"overall": whole.get("overall"), **(whole.get("groups") or {})}
    rows = []
    for name, row in [("overall", copies["overall"]), *copies["groups"].items()]:
        other = whole_rows.get(name) or {}
        rows.append([name, str(row["n"]), str(row["copies"]), _fmt(row["copy_share"], 3),
                     _fmt(row["median_ratio"], 3), _fmt(other.get("copy_share"), 3),
                     "-" if other.get("copies_of_other_class") is None else str(other["copies_of_other_class"]),
                     "-" if row.get("distinct_nearest") is None else str(row["distinct_nearest"]),
                     "-" if row.get("n_train") is None else str(row["n_train"])])
    return ["", f"Near-copies of training images (nearest / second-nearest training image < "
                f"{copies['threshold']:.3g}; {copies['space']}): within the class, and against the whole "
                "training set:", "",
            *markdown(["subset", "n", "copies", "share", "median ratio", "share (whole set)", "of another class",
                       "distinct nearest", "train images"], rows).split("\n")]


def _describe_reference(reference: dict[str, Any]) -> str:
    text = reference["key"] + ("" if reference.get("n") is None else f" ({reference['n']} images)")
    if reference.get("per_class_max") is not None:
        text += f", {reference['per_class_min']}-{reference['per_class_max']} per class"
    return text


def _describe_groups(result: dict[str, Any]) -> str:
    if result.get("group_ranking"):
        return f"{result['group_mode']} (classes ranked by {result['group_ranking']})"
    return str(result["group_mode"])


def write_metrics(result: dict[str, Any], out_dir: str | Path, provenance: dict[str, Any] | None = None,
                  record: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``metrics.json`` (numbers, provenance and record) and ``metrics.md`` (tables) into
    ``out_dir``, each whole or not at all.

    ``record``: the evaluation's record (:class:`ccua.records.EvaluationRecord`), what a later
    request is compared with before these numbers are reused. ``provenance``: what the caller
    knows (checkpoint, step, ema, sample settings, seed, counts, ...). Added here: the feature
    network, its weights hash and bf16, the reference set and its size, library versions, the time.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    full_provenance = dict(provenance or {})
    net = result["feature_net"]
    full_provenance.update({
        "feature_net": net["name"], "feature_net_weights_hash": net["weights_hash"], "feature_net_config": net["config"],
        "bf16": net["bf16"], "reference": result["reference"]["key"], "reference_size": result["reference"]["n"],
        "n_generated": result["generated"]["n"], "group_mode": result["group_mode"], "versions": library_versions(),
        "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    payload = _jsonable({"record": record, "provenance": full_provenance, **result})
    json_path = out_dir / "metrics.json"
    write_text_atomic(json_path, json.dumps(payload, indent=2, allow_nan=False))
    lines = ["# Evaluation", ""]
    for key, value in sampling_description(payload).items():
        if value is not None:
            lines.append(f"- {key}: {value}")
    lines += [f"- feature network: {net['name']} (sha256 {net['weights_hash'][:12]}…, {net['config'] or 'default'}"
              f"{', bf16' if net['bf16'] else ''})",
              f"- reference: {_describe_reference(result['reference'])}",
              f"- generated: {result['generated']['n']} images, groups: {_describe_groups(result)}", ""]
    lines.append(format_table(result))
    lines += copies_table(result.get("memorisation"))
    if result["notes"] or result["warnings"]:
        lines += ["", "## Notes", ""]
        lines += [f"- {k}: {v}" for k, v in result["notes"].items()]
        lines += [f"- warning: {w}" for w in result["warnings"]]
    md_path = out_dir / "metrics.md"
    write_text_atomic(md_path, "\n".join(lines) + "\n")
    return {"json": json_path, "markdown": md_path}


def sampling_description(metrics: dict[str, Any]) -> dict[str, Any]:
    """checkpoint, step, ema, sampler, sampler steps, guidance and seed of an evaluation: from its
    record, or from the provenance of a metrics file written before records existed."""
    record = metrics.get("record") or {}
    samples = record.get("samples") or {}
    if samples.get("kind") == "file":
        samples = samples.get("request") or {}
    provenance = metrics.get("provenance") or {}
    if samples:
        sample = samples.get("sample") or {}
        return {"checkpoint": provenance.get("checkpoint"), "step": samples.get("step"), "ema": samples.get("ema"),
                "sampler": sample.get("sampler"), "steps": sample.get("steps"), "guidance": sample.get("guidance"),
                "seed": samples.get("seed")}
    sample = provenance.get("sample") or {}
    return {key: provenance.get(key, sample.get(key)) for key in
            ("checkpoint", "step", "ema", "sampler", "steps", "guidance", "seed")}


def load_metrics(path: str | Path) -> dict[str, Any]:
    """Read a metrics.json written by :func:`write_metrics`."""
    return json.loads(Path(path).read_text())
