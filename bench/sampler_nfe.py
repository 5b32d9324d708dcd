r"""FID (and tail FID) against the number of network evaluations, per sampler: which is the cheapest
sampler at equal quality for a trained model?

For each sampler (ddim, dpm++, unipc by default) and each step count, this evaluates the run with
``ccua evaluate``'s machinery (the same samples' noise for every setting, the same features and
reference) and prints one table: overall FID, tail FID, tail recall and the seconds the sampling
took. Network evaluations = steps (guidance runs its two passes in one batched call, so each
costs about twice the single pass). Evaluations are kept under the run's ``eval_nfe/`` and
reused when their record is unchanged, so an interrupted benchmark resumes. Example:
    python bench/sampler_nfe.py runs/demo/000-fashion_mnist_lt_ccua --features classifier \
        --feature-path .cache/ccua/classifiers/fashion_mnist-16px.pt --steps 5,10,20,50
"""

from __future__ import annotations

import argparse
import time
from ccua.evaluation import evaluate_source
from ccua.runs import resolve_checkpoint, run_folder_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="run folder or checkpoint")
    parser.add_argument("--samplers", default="ddim,dpm++,unipc")
    parser.add_argument("--steps", default="5,10,20,50", help="comma-separated step counts (= network evaluations)")
    parser.add_argument("--features", default="classifier")
    parser.add_argument("--feature-path", default=None)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--guidance", type=float, default=None, help="default: the run's")
    parser.add_argument("--reference", default="train")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    rows = []
    for sampler in args.samplers.split(","):
        for steps in (int(s) for s in args.steps.split(",")):
            start = time.perf_counter()
            result, out = evaluate_source(args.run, features=args.features, feature_path=args.feature_path,
                                          per_class=args.per_class, sampler=sampler, steps=steps,
                                          guidance=args.guidance, reference_split=args.reference,
                                          eval_root=run_folder_of(resolve_checkpoint(args.run)) / "eval_nfe",
                                          reuse=True, memorisation=False, device=args.device)
            seconds = time.perf_counter() - start  # sampling and scoring; about 0 when reused
            tail = result["groups"].get("tail", {})
            rows.append((sampler, steps, result["overall"]["fid"], tail.get("fid"), tail.get("recall"), seconds))
            print(f"{sampler} {steps}: FID {result['overall']['fid']:.2f} ({out})", flush=True)
    print("\n| sampler | network evaluations | FID | tail FID | tail recall | "
          "seconds (sampling + scoring, 0 = reused) |")
    print("|---|---:|---:|---:|---:|---:|")
    for sampler, steps, fid, tail_fid, tail_recall, seconds in rows:
        print(f"| {sampler} | {steps} | {fid:.2f} | {tail_fid:.2f} | {tail_recall:.3f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
