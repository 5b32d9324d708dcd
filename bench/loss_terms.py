"""Magnitudes of each loss term per run: the mean over the last logged steps of losses.jsonl.

Shows how large the methods' extra terms are against the denoising loss (SPEC section 11: at the
released weights CCUA's terms are a few percent of it at small scale). Runs whose folder names
differ only in a trailing -s<seed> are averaged. Example:
    python bench/loss_terms.py runs/study_fashion_mnist_lt/runs --last 500
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

from ccua.runs import LOSS_LOG_BOOKKEEPING, read_loss_log

SEED_SUFFIX = re.compile(r"-s\d+$")
NOT_TERMS = LOSS_LOG_BOOKKEEPING | {"total"}  # the sum of the terms is not one of them


def mean_terms(log: Path, last: int) -> tuple[dict[str, float], int]:
    """Mean of every loss term over the rows of the last ``last`` steps; and the final step."""
    rows = read_loss_log(log)  # a run still training reads as well
    if not rows:
        return {}, 0
    final = rows[-1]["step"]
    recent = [r for r in rows if r["step"] > final - last]
    terms = {k for r in recent for k in r if k not in NOT_TERMS}
    return {k: sum(r[k] for r in recent if k in r) / sum(1 for r in recent if k in r) for k in sorted(terms)}, final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", help="folder holding one folder per run (each with losses.jsonl)")
    parser.add_argument("--last", type=int, default=500, help="average over the last N steps")
    args = parser.parse_args()
    grouped: dict[str, list[dict[str, float]]] = defaultdict(list)
    steps: dict[str, set[int]] = defaultdict(set)
    for log in sorted(Path(args.runs).glob("*/losses.jsonl")):
        terms, final = mean_terms(log, args.last)
        if terms:
            name = SEED_SUFFIX.sub("", log.parent.name)
            grouped[name].append(terms)
            steps[name].add(final)
    columns = sorted({k for runs in grouped.values() for terms in runs for k in terms}, key=lambda k: (k != "dm", k))
    print(f"mean of each term over the last {args.last} steps (weighted as trained, i.e. alpha * UCL, gamma * AL)")
    print("| variant | runs | step | " + " | ".join(columns) + " | extra / dm |")
    print("|---|---:|---:|" + "---:|" * len(columns) + "---:|")
    for name, runs in grouped.items():
        mean = {k: sum(t.get(k, 0.0) for t in runs) / len(runs) for k in columns}
        extra = sum(v for k, v in mean.items() if k != "dm")
        cells = [f"{mean[k]:.2e}" if any(k in t for t in runs) else "-" for k in columns]
        print(f"| {name} | {len(runs)} | {'/'.join(map(str, sorted(steps[name])))} | " + " | ".join(cells)
              + f" | {extra / mean['dm']:.1%} |")


if __name__ == "__main__":
    main()
