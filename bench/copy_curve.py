r"""The near-copy share of a run's samples along its training: at which budget does it copy its tail?

For every kept checkpoint of each run (or those named with --steps) and every guidance w, this
samples ``--per-class`` images of every class (the same initial noise for every checkpoint) and
measures near-copies of the training images (``ccua.metrics.memorisation``: nearest /
second-nearest < 1/3, shifts of up to 2 pixels and mirroring allowed), per head/body/tail group:
the share within the class, the share against the whole training set, and the distinct training
images the samples land nearest to. It prints one table and writes it as CSV (``--out``); rows
already in that CSV are not measured again, so an interrupted curve resumes. Example (the pilot of
docs/results/memorising_regime.md):
    python bench/copy_curve.py runs/fashion_mnist_lt_memorising/runs/plain-s0 --guidance 0,1 \
        --per-class 50 --sampler-steps 50 --eta 1 --out runs/fashion_mnist_lt_memorising/pilot_copies.csv
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch

from ccua.config import sample_settings_changes
from ccua.data import build_training_set, class_groups
from ccua.files import atomic_file
from ccua.generate import LoadedModel
from ccua.images import to_uint8_nchw
from ccua.metrics.memorisation import memorisation
from ccua.runs import RunFolder

COLUMNS = ("run", "step", "guidance", "sampler", "group", "n", "n_train", "copy_share", "copy_share_whole_set",
           "copies_of_other_class", "distinct_nearest", "median_ratio")
NOISE_SEED = 2024  # one noise stream for every checkpoint and run: the curves differ by the weights alone


def measure(checkpoint: Path, guidance: float, per_class: int, sampler_steps: int, sampler: str = "ddim",
            eta: float = 0.0) -> list[dict]:
    """One row per group (and overall) for one checkpoint at one guidance."""
    loaded = LoadedModel(checkpoint)
    sample = loaded.sample_settings(sample_settings_changes(
        {"guidance": guidance, "steps": sampler_steps, "sampler": sampler, "ddim": {"eta": eta}}, "copy_curve"))
    labels = torch.arange(len(loaded.class_counts)).repeat_interleave(per_class)
    images = loaded.sample_uint8(labels, sample, seed=NOISE_SEED, progress=False)
    train = build_training_set(loaded.config.data)
    train_images = np.stack([np.asarray(train.uint8_image(i)) for i in range(len(train))])
    groups = class_groups(len(loaded.class_counts), loaded.class_counts)
    found = memorisation(to_uint8_nchw(images).numpy(), labels.numpy(), train_images, train.labels, groups)
    rows = []
    for name in ["overall", *groups]:
        within = found["overall"] if name == "overall" else found["groups"][name]
        whole = found["whole_set"]["overall"] if name == "overall" else found["whole_set"]["groups"][name]
        rows.append({"run": loaded.run_dir.name, "step": loaded.step, "guidance": guidance,
                     "sampler": _label(sampler, sampler_steps, eta), "group": name,
                     "n": within["n"], "n_train": within.get("n_train", len(train)),
                     "copy_share": within["copy_share"], "copy_share_whole_set": whole["copy_share"],
                     "copies_of_other_class": whole["copies_of_other_class"],
                     "distinct_nearest": within["distinct_nearest"], "median_ratio": within["median_ratio"]})
    return rows


def _label(sampler: str, steps: int, eta: float) -> str:
    """The sampler as the table shows it: ``ddim50``, ``ddim50 eta1``, ``ddpm``, ``dpm++20``."""
    shown_steps = "" if sampler == "ddpm" else str(steps)
    return f"{sampler}{shown_steps}" + (f" eta{eta:g}" if sampler == "ddim" and eta else "")


def _done(path: Path) -> tuple[list[dict], set[tuple]]:
    if not path.is_file():
        return [], set()
    rows = list(csv.DictReader(path.open()))
    for row in rows:  # rows of a CSV written before the sampler column: the default DDIM 50
        row["sampler"] = row.get("sampler") or "ddim50"
    return rows, {(r["run"], int(r["step"]), float(r["guidance"]), r["sampler"]) for r in rows}


def _print(rows: list[dict]) -> None:
    """One table per run, sampler and w: a row per checkpoint, a cell per group holding the near-copy
    share within the class / against the whole set / distinct nearest / median ratio."""
    groups = ["head", "body", "tail"]
    tables = sorted({(r["run"], r["sampler"], float(r["guidance"])) for r in rows})
    for run, sampler, w in tables:
        cells: dict[int, dict[str, dict]] = {}
        for r in rows:
            if (r["run"], r["sampler"], float(r["guidance"])) == (run, sampler, w):
                cells.setdefault(int(r["step"]), {})[r["group"]] = r
        print(f"\n{run}, {sampler}, w = {w:g} (class / all / distinct / ratio)\n")
        print("| step | " + " | ".join(groups) + " |")
        print("|---|" + "---|" * len(groups))
        for step in sorted(cells):
            shown = [_cell(cells[step].get(group)) for group in groups]
            print(f"| {step} | " + " | ".join(shown) + " |")


def _cell(row: dict | None) -> str:
    if row is None:
        return "-"
    return (f"{100 * float(row['copy_share']):.1f}% / {100 * float(row['copy_share_whole_set']):.1f}% / "
            f"{row['distinct_nearest']} / {float(row['median_ratio']):.2f}")


def plot(rows: list[dict], path: Path) -> None:
    """Near-copy share (within the class) and distinct nearest training images against the step,
    per group and guidance, one panel each."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), dpi=110)
    FigureCanvasAgg(figure)
    share, distinct = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    series = sorted({(r["run"], r["group"], float(r["guidance"]), r["sampler"]) for r in rows
                     if r["group"] != "overall"})
    for index, (run, group, w, sampler) in enumerate(series):
        points = sorted(((int(r["step"]), r) for r in rows
                         if (r["run"], r["group"], float(r["guidance"]), r["sampler"]) == (run, group, w, sampler)),
                        key=lambda pair: pair[0])
        steps = [step for step, _ in points]
        style = {"color": f"C{['head', 'body', 'tail'].index(group) if group in ('head', 'body', 'tail') else 3}",
                 "linestyle": "-" if w else "--", "marker": "o", "markersize": 3}
        label = f"{run} {group} w={w:g} {sampler}"
        share.plot(steps, [float(r["copy_share"]) for _, r in points], label=label, **style)
        distinct.plot(steps, [int(r["distinct_nearest"]) / max(1, int(r["n_train"])) for _, r in points], **style)
    share.set_xlabel("training step")
    share.set_ylabel("near-copy share (within the class)")
    share.axhline(0.2, color="grey", linewidth=0.8, linestyle=":")
    distinct.set_xlabel("training step")
    distinct.set_ylabel("distinct nearest training images / training images")
    for axes in (share, distinct):
        axes.grid(alpha=0.3)
    share.legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders")
    parser.add_argument("--steps", default=None, help="comma-separated checkpoint steps (default: every kept one)")
    parser.add_argument("--guidance", default="0,1", help="comma-separated w values")
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--sampler-steps", type=int, default=50)
    parser.add_argument("--sampler", default="ddim", help="ddim, ddpm (ancestral, 1000 steps), dpm++, unipc")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM's eta (1: fresh noise at every step)")
    parser.add_argument("--out", required=True, help="CSV file (rows already there are kept, not measured again)")
    parser.add_argument("--plot", default=None, help="PNG of the curves")
    parser.add_argument("--plot-sampler", default=None,
                        help="plot only this sampler's rows, as the table names it (e.g. 'ddim50 eta1')")
    args = parser.parse_args()
    out = Path(args.out)
    rows, done = _done(out)
    wanted = None if args.steps is None else {int(s) for s in args.steps.split(",")}
    for run in args.runs:
        folder = RunFolder(Path(run))
        for step, checkpoint in zip(folder.checkpoint_steps(), folder.checkpoints()):
            for w in (float(v) for v in args.guidance.split(",")):
                label = _label(args.sampler, args.sampler_steps, args.eta)
                if (wanted is not None and step not in wanted) or (folder.path.name, step, w, label) in done:
                    continue
                rows += measure(checkpoint, w, args.per_class, args.sampler_steps, args.sampler, args.eta)
                with atomic_file(out, "w") as stream:  # rewritten after each point: nothing lost on a stop
                    writer = csv.DictWriter(stream, fieldnames=COLUMNS)
                    writer.writeheader()
                    writer.writerows(rows)
                print(f"{folder.path.name} step {step} w {w:g}: measured", flush=True)
    _print(rows)
    if args.plot:
        plot([r for r in rows if args.plot_sampler in (None, r["sampler"])], Path(args.plot))
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
