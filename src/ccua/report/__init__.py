"""Reports: the files of one evaluation (metrics.json, metrics.md) and comparisons across runs
(tables in Markdown and CSV, paired differences, per-class plots, cross-run grids)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from ccua.files import write_text_atomic
from ccua.metrics.subset_metrics import CLASS_ACCURACY, FID, KID, PRECISION, RECALL
from ccua.report.grids import tail_grid
from ccua.report.metrics_files import copies_table, format_table, library_versions, load_metrics, write_metrics
from ccua.report.plots import available_metric, plot_per_class
from ccua.report.tables import (COPY_METRICS, WHOLE_SET_COPY_METRICS, Run, group_metrics, overall_metrics,
                                comparability_notes, find_metrics_file, group_key, group_names, load_runs,
                                markdown_table, metric_columns, paired_markdown, paired_rows, run_row, summary_markdown, summary_rows, write_csv)

logger = logging.getLogger(__name__)

# What make_report may write besides comparison.md / .csv, by its key in the returned paths: a report
# rewritten into the same folder removes those it does not write this time (one method left: no
# summary or differences), so no file of an earlier report stands beside the new one.
OPTIONAL_REPORT_FILES = {"summary_csv": "summary.csv", "differences_csv": "differences.csv", "plot": "per_class.png"}


def make_report(metric_files_or_run_dirs: list[str | Path], out_dir: str | Path, names: list[str] | None = None,
                seeds_grouping: str | Callable[[str], str] = "name", title: str = "Comparison",
                baseline: str | None = None) -> dict[str, Path]:
    """Compare several evaluated runs.

    Each input is a metrics.json file or a folder (its newest ``**/metrics.json`` is used).
    ``names``: display names (default: the run folder names). Runs whose names fall into one group
    under ``seeds_grouping`` ("name": identical names; "strip_seed": names equal up to a trailing
    -seed1/_s2; "none"; or a callable name -> group) are also summarised as mean ± std.

    Writes into ``out_dir``: comparison.md, comparison.csv (one row per run), summary.csv (mean
    and std per group, when some group has several runs) and per_class.png (per-class FID and
    recall, or the per-class metric available, against the training count, log x). With
    ``baseline`` (a group name) the report adds each other group's paired difference to it over
    the seeds both share, with a 95% t interval (differences.csv). Of these files an earlier
    report left in ``out_dir``, those this one does not write are removed. Returns the paths.
    """
    if not metric_files_or_run_dirs:
        raise ValueError("no runs given")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = load_runs(list(metric_files_or_run_dirs), names)
    groups = group_names(runs)
    rows = [run_row(run, groups) for run in runs]
    keys = [group_key(run.name, seeds_grouping) for run in runs]
    columns = metric_columns(groups)
    paths = {"csv": write_csv(rows, out_dir / "comparison.csv")}

    parts = [f"# {title}", "", markdown_table(rows, _shown_columns(rows, groups))]
    if any(keys.count(k) > 1 for k in keys if k is not None):
        parts += _summary_section(rows, keys, columns, out_dir, paths)
    if baseline is not None and baseline in keys:
        parts += _differences_section(rows, keys, baseline, columns, out_dir, paths)
    notes = comparability_notes(runs)
    for note in notes:
        logger.warning(note)
    parts += ["", "## Sources", ""] + [f"- {run.name}: {run.path}" for run in runs]
    if notes:
        parts += ["", "## Warnings", ""] + [f"- {n}" for n in notes]
    # FID, the first of recall / KID / precision the runs have, and class accuracy
    second = available_metric(runs, (RECALL.key, KID.key, PRECISION.key))
    plot_metrics = tuple(m for m in (FID.key, second, CLASS_ACCURACY.key) if m and available_metric(runs, (m,)))
    if plot_metrics:
        paths["plot"] = plot_per_class(runs, out_dir / "per_class.png", plot_metrics)
        parts += ["", f"![per-class {', '.join(plot_metrics)}](per_class.png)"]
    paths["markdown"] = out_dir / "comparison.md"
    write_text_atomic(paths["markdown"], "\n".join(parts) + "\n")
    for key, file_name in OPTIONAL_REPORT_FILES.items():
        if key not in paths:
            (out_dir / file_name).unlink(missing_ok=True)
    return paths


def _shown_columns(rows: list[dict], groups: list[str]) -> list[str]:
    """The comparison table's columns: overall numbers, then each group's image count and numbers,
    leaving out columns no run has."""
    copy_metrics = COPY_METRICS + WHOLE_SET_COPY_METRICS
    shown = ["name", "seed", "guidance", "n_gen"] + [column for _, column in overall_metrics() + list(copy_metrics)]
    for group in groups:
        shown += [f"n_gen_{group}"] + [f"{column}_{group}" for _, column in group_metrics() + list(copy_metrics)]
    return [c for c in shown if c in ("name", "seed", "guidance") or any(r.get(c) is not None for r in rows)]


def _summary_section(rows: list[dict], keys: list[str | None], columns: list[str], out_dir: Path,
                     paths: dict[str, Path]) -> list[str]:
    """Mean and std over the runs of one setting (summary.csv and a Markdown section)."""
    summary = summary_rows(rows, keys, columns)
    paths["summary_csv"] = write_csv(summary, out_dir / "summary.csv")
    summary_columns = [c for c in columns if any(s[f"{c}_mean"] is not None for s in summary)]
    return ["", "## Mean ± std over runs of the same setting (sample std)", "",
            summary_markdown(summary, summary_columns)]


def _differences_section(rows: list[dict], keys: list[str | None], baseline: str, columns: list[str], out_dir: Path,
                         paths: dict[str, Path]) -> list[str]:
    """Each setting's paired difference to ``baseline`` over shared seeds (differences.csv and a section)."""
    differences = paired_rows(rows, keys, baseline, columns)
    if not differences:
        return []
    paths["differences_csv"] = write_csv(
        [{"name": name, "metric": column, "mean": d.mean, "low": d.low, "high": d.high, "n_seeds": d.n,
          "detectable": d.detectable}
         for name, per_column in differences.items() for column, d in per_column.items() if d is not None],
        out_dir / "differences.csv")
    return ["", f"## Difference to {baseline}, paired over seeds (mean [95% t interval])", "",
            "Lower is better for fid, kid and copies; higher for precision, recall, is and "
            "class_accuracy. \"no detectable difference\": the interval covers 0.", "",
            paired_markdown(differences, columns)]


__all__ = ["Run", "copies_table", "find_metrics_file", "format_table", "library_versions", "load_metrics", "load_runs",
           "make_report", "plot_per_class", "run_row", "summary_rows", "tail_grid", "write_metrics"]
