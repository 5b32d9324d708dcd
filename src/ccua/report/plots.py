"""Per-class metrics against the training-set count (matplotlib, Agg, no pyplot state)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ccua.files import atomic_file
from ccua.metrics.subset_metrics import FID, RECALL, registered_columns
from ccua.report.tables import Run

MARKERS = "osD^v<>pXh*"


def _series(run: Run, metric: str) -> tuple[list[float], list[float], bool]:
    """(x, y, x_is_count): per-class ``metric`` against the training count (or class index)."""
    rows = [r for r in run.metrics.get("per_class", []) if r.get(metric) is not None]
    have_counts = bool(rows) and all(r.get("train_count") for r in rows)
    rows.sort(key=lambda r: r["train_count"] if have_counts else r["class"])
    xs = [float(r["train_count"] if have_counts else r["class"]) for r in rows]
    return xs, [float(r[metric]) for r in rows], have_counts


def _by_label(runs: list[Run], labels: list[str]) -> dict[str, list[Run]]:
    grouped: dict[str, list[Run]] = {}
    for run, label in zip(runs, labels):
        grouped.setdefault(label, []).append(run)
    return grouped


def _draw_group(axes, group: list[Run], metric: str, label: str, index: int) -> bool:
    """One method on one panel: its mean over runs (seeds), with the min-max band when the runs
    share their classes. Returns whether the x values are training counts."""
    series = [_series(run, metric) for run in group]
    series = [s for s in series if s[0]]
    if not series:
        return True
    have_counts = all(s[2] for s in series)
    style = {"marker": MARKERS[index % len(MARKERS)], "markersize": 4, "linewidth": 1.2, "color": f"C{index}"}
    if len(series) > 1 and all(s[0] == series[0][0] for s in series):
        values = np.array([s[1] for s in series])
        axes.plot(series[0][0], values.mean(axis=0), label=f"{label} (mean of {len(series)}, band min-max)", **style)
        axes.fill_between(series[0][0], values.min(axis=0), values.max(axis=0), color=f"C{index}", alpha=0.15)
    else:
        for number, (xs, ys, _) in enumerate(series):
            axes.plot(xs, ys, alpha=0.85, label=label if number == 0 else None, **style)
    return have_counts


def plot_per_class(runs: list[Run], path: str | Path, metrics: tuple[str, ...] = (FID.key, RECALL.key),
                   labels: list[str] | None = None) -> Path:
    """One panel per metric, per-class values against the training count on a log x axis, one
    colour per method: runs with the same label (seeds) are drawn as their mean with a min-max
    band. Falls back to the class index when counts are missing."""
    figure = Figure(figsize=(5.0 * len(metrics), 4.2), dpi=110)
    FigureCanvasAgg(figure)
    groups = _by_label(runs, labels or [run.name for run in runs])
    for panel, metric in enumerate(metrics):
        axes = figure.add_subplot(1, len(metrics), panel + 1)
        log_x = all([_draw_group(axes, group, metric, label, i) for i, (label, group) in enumerate(groups.items())])
        if log_x:
            axes.set_xscale("log")
        axes.set_xlabel("training images of the class" if log_x else "class index")
        shown = next((c.title for c in registered_columns() if c.key == metric), metric)
        axes.set_ylabel(f"per-class {shown}")
        axes.grid(True, which="both", alpha=0.3)
        axes.set_title(f"per-class {shown}")
        if panel == 0 and runs:
            axes.legend(fontsize=7)
    figure.tight_layout()
    path = Path(path)
    with atomic_file(path) as stream:
        figure.savefig(stream, format=path.suffix.lstrip(".") or "png")
    return path


def available_metric(runs: list[Run], preferred: tuple[str, ...]) -> str | None:
    """The first of ``preferred`` that some run has per class."""
    for metric in preferred:
        if any(r.get(metric) is not None for run in runs for r in run.metrics.get("per_class", [])):
            return metric
    return None
