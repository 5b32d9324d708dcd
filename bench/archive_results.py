"""Copy a study's numbers (not its checkpoints or images) into a folder that can be committed.

A results page should name files its readers can open; a study's output folder (``runs/...``) is
gigabytes of checkpoints and samples that stay on the machine that trained it. This keeps the small
text files every table is read from, in the same layout, so that ``ccua report``,
``bench/study_tables.py`` and ``bench/tradeoff_curve.py`` run on the copy as on the original:

- every ``metrics.json`` under a run's ``eval*/`` folders, and that run's ``config.yaml``,
- the study's ``guidance.json``, its ``report*/`` tables (``*.csv``, ``*.md``, ``*.json``) and the
  CSV files at its top (e.g. ``bench/copy_curve.py``'s near-copy curves).

Files already in the copy are replaced, none is removed (runs lost since stay recorded). Example:
    python bench/archive_results.py runs/fashion_mnist_lt_memorising docs/results/memorising_regime_data
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

REPORT_SUFFIXES = {".csv", ".md", ".json"}
LARGEST_FILE = 2_000_000  # bytes: a numbers file larger than this is a mistake, not a result


def files_to_keep(study: Path) -> list[Path]:
    """The study's small result files, as paths relative to ``study``."""
    found: list[Path] = []
    for run in sorted((study / "runs").glob("*")):
        evaluations = sorted(run.glob("eval*/*/metrics.json"))
        if evaluations:  # a run still training has no numbers yet
            found += [p for p in [run / "config.yaml"] if p.is_file()] + evaluations
    found += [p for p in [study / "guidance.json"] if p.is_file()]
    found += sorted(study.glob("*.csv"))
    for report in sorted(study.glob("report*")):
        if report.is_dir():
            found += sorted(p for p in report.rglob("*") if p.is_file() and p.suffix in REPORT_SUFFIXES)
    return [p.relative_to(study) for p in found]


def archive(study: Path, dest: Path) -> list[Path]:
    """Copy :func:`files_to_keep` from ``study`` to ``dest``; returns what was copied."""
    if not (study / "runs").is_dir():
        raise SystemExit(f"{study} holds no runs/ folder: is it the output folder of `ccua compare`?")
    kept = files_to_keep(study)
    too_large = [p for p in kept if (study / p).stat().st_size > LARGEST_FILE]
    if too_large:
        raise SystemExit(f"refusing files over {LARGEST_FILE} bytes: {[str(p) for p in too_large]}")
    for relative in kept:
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(study / relative, target)
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", type=Path, help="the output folder of `ccua compare`")
    parser.add_argument("dest", type=Path, help="where the copy goes (created)")
    args = parser.parse_args()
    kept = archive(args.study, args.dest)
    size = sum((args.dest / p).stat().st_size for p in kept)
    print(f"{len(kept)} files ({size / 1e6:.2f} MB) copied to {args.dest}")


if __name__ == "__main__":
    main()
