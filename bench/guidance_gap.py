"""How far apart a model's conditional and unconditional predictions are, per noise level and group.

Classifier-free guidance amplifies exactly this difference (eps_c - eps_u); CCUA's alignment loss
shrinks it at high noise. For each run (EMA weights of its newest checkpoint) this prints the
root-mean-square of eps(x_t, t, y) - eps(x_t, t, null) per element, on held-out test images
(``--per-class`` of each class, the same images and noise for every run), at a few noise levels,
per head/body/tail group. Runs whose folder names differ only in a trailing -s<seed> are averaged.
DDPM (epsilon) runs only. Example:
    python bench/guidance_gap.py runs/study_fashion_mnist_lt/runs/plain-s* runs/study_fashion_mnist_lt/runs/ccua-s*
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from ccua.data import build_reference_set, class_groups
from ccua.generate import LoadedModel

SEED_SUFFIX = re.compile(r"-s\d+$")
GROUPS = ("head", "body", "tail")  # the keys of class_groups, in order


def held_out_batch(loaded: LoadedModel, per_class: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` test images of every class (the same ones for every run of one data set)."""
    reference = build_reference_set(loaded.config.data, "test")
    rng = np.random.default_rng(seed)
    picked = np.concatenate([rng.permutation(np.flatnonzero(reference.labels == c))[:per_class]
                             for c in range(reference.num_classes)])
    images = torch.stack([reference[int(i)][0] for i in picked])
    return images, torch.as_tensor(reference.labels[picked], dtype=torch.long)


@torch.no_grad()
def gap_per_group(loaded: LoadedModel, images: torch.Tensor, labels: torch.Tensor,
                  levels: list[float], seed: int = 0) -> dict[tuple[str, float], float]:
    """RMS of eps_c - eps_u per (group, noise level s)."""
    groups = class_groups(len(loaded.class_counts), loaded.class_counts)
    rows = {name: torch.isin(labels, torch.tensor(members)) for name, members in groups.items()}
    generator = torch.Generator().manual_seed(seed)
    null = torch.full_like(labels, loaded.model.null_label)
    gaps = {}
    for level in levels:
        t = torch.full_like(labels, int(level * (loaded.objective.timesteps - 1)))
        noise = torch.randn(images.shape, generator=generator)
        x_t = loaded.objective.q_sample(images, t, noise)
        difference = (loaded.model(x_t, t, labels) - loaded.model(x_t, t, null)).pow(2).flatten(1).mean(1)
        for name in GROUPS:
            gaps[name, level] = float(difference[rows[name]].mean().sqrt())
    return gaps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders (or checkpoints)")
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--levels", default="0.1,0.3,0.5,0.7,0.9", help="noise levels s = t / T")
    args = parser.parse_args()
    levels = [float(v) for v in args.levels.split(",")]
    by_variant: dict[str, list[dict]] = defaultdict(list)
    batch = None
    for run in args.runs:
        loaded = LoadedModel(run)
        batch = batch or held_out_batch(loaded, args.per_class)
        by_variant[SEED_SUFFIX.sub("", Path(run).name)].append(gap_per_group(loaded, *batch, levels))
    header = [f"{name} s={level}" for name in GROUPS for level in levels]
    print("RMS of eps(x_t, y) - eps(x_t, null) per element (mean over runs)\n")
    print("| variant | runs | " + " | ".join(header) + " |")
    print("|---|---:|" + "---:|" * len(header))
    for variant, gaps in by_variant.items():
        cells = [f"{np.mean([g[name, level] for g in gaps]):.4f}" for name in GROUPS for level in levels]
        print(f"| {variant} | {len(gaps)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
