"""The guidance tuner's proxy sweep on the seeds it does not tune on, for a trade-off curve over seeds.

``ccua compare`` tunes each variant's w on one seed (its first): the proxy evaluations at every w of
the study's grid (few samples per class from their own noise seed, against the test split) exist
for that seed's run only, so ``bench/tradeoff_curve.py`` draws the trade-off between tail class
accuracy and tail near-copies from one seed. This runs the very same sweep on other trained runs
of the study (the same evaluation records, written into each run's ``eval_guidance/`` and reused
when already there), so the curve averages over seeds. It changes nothing the comparison chose:
``guidance.json`` stays the tuning seed's, and a run not yet trained to the budget is skipped.
Example:
    python bench/guidance_sweep.py studies/fashion_mnist_lt_memorising.yaml --only plain,ccua,cbdm --seeds 1,2
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ccua.compare import TRAINED, named_variants, planned_runs, study_settings, study_status, tune_guidance
from ccua.config.schema import ConfigError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", help="study file (path or shipped name)")
    parser.add_argument("--out", default=None, help="the comparison's output folder (default: the study's)")
    parser.add_argument("--only", default=None, help="comma-separated variants (default: all)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: all of the study's)")
    args = parser.parse_args()

    # The whole study is loaded and narrowed here rather than by ``only``: a study narrowed to some
    # variants must still name its baseline, and sweeping one ablation should not sweep plain too.
    settings = study_settings(args.study, out_dir=Path(args.out) if args.out else None)
    if not settings.guidance_grid:
        raise SystemExit(f"{args.study}: the study has no guidance grid to sweep")
    try:
        swept = named_variants(settings.variants, args.only.split(","), args.study) if args.only else settings.variants
    except ConfigError as error:
        raise SystemExit(str(error)) from None
    only = {variant.name for variant in swept}
    seeds = {int(s) for s in args.seeds.split(",")} if args.seeds else None
    trained = {status.name for status in study_status(settings) if status.state == TRAINED}
    grid = ", ".join(f"{w:g}" for w in settings.guidance_grid)
    for run in planned_runs(settings):
        if run.variant not in only or (seeds is not None and run.seed not in seeds):
            continue
        if run.name not in trained:
            print(f"{run.name}: not trained to the budget, skipped")
            continue
        tuned = tune_guidance(settings, run, settings.guidance_grid)
        overall = ", ".join(f"{w}: {fid:.2f}" for w, fid in tuned["proxy_fid"].items())
        tail = ", ".join(f"{w}: {fid:.2f}" for w, fid in tuned["proxy_fid_tail"].items() if fid is not None)
        print(f"{run.name} (w = {grid}): proxy FID {overall}; tail {tail}")


if __name__ == "__main__":
    main()
