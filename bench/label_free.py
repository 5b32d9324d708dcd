"""A label-free view of a comparison's final numbers: its samples scored again in pixel space.

The study's numbers use a domain classifier's features, trained with the labels: a method could
look better by matching what the classifier keys on. This re-scores the very samples of each run's
evaluation (the fixed-guidance one against the balanced training split, found by its record) with
the ``pixels`` feature network (a 16x16 grey thumbnail, no network) and prints, per variant, the
mean ± std over seeds of FID, precision and recall overall and per group, in pixel space. The new
evaluations live under ``<run>/eval_pixels`` (reused when their record is unchanged). Example:
    python bench/label_free.py runs/fashion_mnist_lt_memorising --guidance 1
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from ccua.evaluation import evaluate_source

SEED_SUFFIX = re.compile(r"-s(\d+)$")
COLUMNS = ("fid", "precision", "recall")


def final_samples(run_dir: Path, guidance: float, reference: str = "train") -> Path | None:
    """The samples folder of the run's evaluation at ``guidance`` against ``reference`` (newest step)."""
    found = []
    for path in (run_dir / "eval").glob("*/metrics.json"):
        record = json.loads(path.read_text()).get("record") or {}
        samples = record.get("samples") or {}
        if samples.get("kind") != "checkpoint" or record.get("scoring", {}).get("reference") != reference:
            continue
        if abs(samples["sample"]["guidance"] - guidance) < 1e-9:
            found.append((samples["step"], path.parent / "samples"))
    return max(found)[1] if found else None


def _mean_and_spread(values: list[float]) -> str:
    """``mean ± sample std`` over seeds; the mean alone from one seed (it has no spread to show)."""
    mean = f"{np.mean(values):.3f}"
    return mean if len(values) < 2 else f"{mean} ± {np.std(values, ddof=1):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="a comparison's output folder")
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--max-reference", type=int, default=None)
    args = parser.parse_args()
    table: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run_dir in sorted(Path(args.out, "runs").iterdir()):
        samples = final_samples(run_dir, args.guidance)
        if samples is None:
            continue
        result, _ = evaluate_source(samples, features="pixels", eval_root=run_dir / "eval_pixels", reuse=True,
                                    memorisation=False, max_reference=args.max_reference)
        variant = SEED_SUFFIX.sub("", run_dir.name)
        for group, row in [("overall", result["overall"]), *result["groups"].items()]:
            for column in COLUMNS:
                if row.get(column) is not None:
                    table[variant][f"{column}_{group}"].append(float(row[column]))
    keys = [f"{c}_{g}" for g in ("overall", "head", "body", "tail") for c in COLUMNS]
    print("| variant | seeds | " + " | ".join(keys) + " |\n|---|---:|" + "---:|" * len(keys))
    for variant, values in table.items():
        cells = [_mean_and_spread(values[k]) if values.get(k) else "-" for k in keys]
        print(f"| {variant} | {len(values['fid_overall'])} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
