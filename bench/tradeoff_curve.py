"""Tail class accuracy against tail near-copy share, over the guidance grid, per method.

Guidance trades class fidelity for diversity: a method judged at one w can look better or worse
than at another. For every variant of a comparison this reads the guidance tuner's proxy
evaluations (``<out>/runs/<variant>-s<seed>/eval_guidance/*/metrics.json``: the proxy's samples
at every w of the study's grid, on the seed the tuner ran, the first by default, and on those
``bench/guidance_sweep.py`` added) and prints, per
variant and w, the tail group's class accuracy, its near-copy share (within the class and against
the whole training set) and its proxy FID, mean (± std) over the seeds found; ``--plot`` draws the
curve (class accuracy on y, near-copy share on x, one line per variant, points labelled by w).
Example:
    python bench/tradeoff_curve.py runs/fashion_mnist_lt_memorising --plot docs/results/memorising_tradeoff.png
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

SEED_SUFFIX = re.compile(r"-s(\d+)$")


def collect(out: Path, group: str = "tail") -> dict[str, dict[float, dict[str, list[float]]]]:
    """variant -> w -> metric -> values over the seeds (tail class accuracy, copy shares, FID)."""
    found: dict[str, dict[float, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for path in sorted(out.glob("runs/*/eval_guidance/*/metrics.json")):
        variant = SEED_SUFFIX.sub("", path.parents[2].name)
        metrics = json.loads(path.read_text())
        w = float(metrics["record"]["samples"]["sample"]["guidance"])
        row = metrics["groups"].get(group) or {}
        copies = metrics.get("memorisation") or {}
        within = (copies.get("groups") or {}).get(group) or {}
        whole = ((copies.get("whole_set") or {}).get("groups") or {}).get(group) or {}
        values = found[variant][w]
        for key, value in (("class_accuracy", row.get("class_accuracy")), ("fid", row.get("fid")),
                           ("copies", within.get("copy_share")), ("copies_whole_set", whole.get("copy_share"))):
            if value is not None:
                values[key].append(float(value))
    return found


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def _mean_std(values: list[float], digits: int) -> str:
    """Mean over the seeds, with the sample std where there are several."""
    if len(values) < 2:
        return f"{_mean(values):.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def plot(curves: dict, path: Path, group: str) -> None:
    figure = Figure(figsize=(5.5, 4.2), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for index, (variant, by_w) in enumerate(curves.items()):
        ws = sorted(by_w)
        xs = [_mean(by_w[w]["copies"]) for w in ws]
        ys = [_mean(by_w[w]["class_accuracy"]) for w in ws]
        seeds = max(len(by_w[w]["class_accuracy"]) for w in ws)
        axes.plot(xs, ys, marker="o", color=f"C{index}", label=f"{variant} ({seeds} seed{'s' * (seeds != 1)})")
        for w, x, y in zip(ws, xs, ys):
            axes.annotate(f"{w:g}", (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    axes.set_xlabel(f"{group} near-copy share (within the class)")
    axes.set_ylabel(f"{group} class accuracy")
    axes.set_title(f"{group}: class fidelity vs copying, over guidance w")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="a comparison's output folder")
    parser.add_argument("--group", default="tail")
    parser.add_argument("--plot", default=None, help="PNG file for the curve")
    args = parser.parse_args()
    curves = collect(Path(args.out), args.group)
    print(f"| variant | w | seeds | {args.group} class acc | {args.group} copies | {args.group} copies (whole set) | "
          f"{args.group} proxy FID |\n|---|---:|---:|---:|---:|---:|---:|")
    for variant, by_w in curves.items():
        for w in sorted(by_w):
            values = by_w[w]
            print(f"| {variant} | {w:g} | {len(values['class_accuracy'])} | {_mean_std(values['class_accuracy'], 3)} | "
                  f"{_mean_std(values['copies'], 3)} | {_mean_std(values['copies_whole_set'], 3)} | "
                  f"{_mean_std(values['fid'], 2)} |")
    if args.plot:
        plot(curves, Path(args.plot), args.group)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
