"""Training step cost of each method relative to the plain objective, on the same model and batch.

Prints a markdown table: steps/s, images/s and the ratio of the step time to plain's.
Example: python bench/step_cost.py --preset fashion_mnist_lt --batch-size 64 --steps 20
"""

from __future__ import annotations

import argparse
import time

import torch

from ccua.config import load_config
from ccua.diffusion import build_objective
from ccua.methods import build_methods
from ccua.models import build_model
from ccua.training.step import PassRunner, training_losses

DEFAULT_METHODS = ["plain", "ccua", "ccua:sequential", "cbdm", "oclt", "dispersive", "supcon"]


def time_method(preset: str, method: str, batch_size: int, steps: int, warmup: int, overrides: list[str]) -> float:
    """Seconds per training step (forward, backward, AdamW) for one method."""
    name, _, mode = method.partition(":")
    config = load_config(preset, overrides + [f"method.names=[{name}]",
                                              f"method.batched_passes={'false' if mode == 'sequential' else 'true'}"])
    channels = 1 if config.data.name in ("fashion_mnist", "mnist") else (4 if config.data.name == "latents" else 3)
    num_classes, res = 10, config.data.resolution
    torch.manual_seed(0)
    model = build_model(config.model, channels, num_classes, res)
    runner = PassRunner(model)
    objective = build_objective(config.diffusion)
    methods = build_methods(config.method)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    counts = torch.tensor([2.0**-c for c in range(num_classes)])
    x0 = torch.randn(batch_size, channels, res, res).clamp(-1, 1)
    labels = torch.randint(0, num_classes, (batch_size,))
    elapsed = 0.0
    for step in range(warmup + steps):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.train.bf16):
            terms = training_losses(runner, objective, methods, x0, labels, model.null_label, counts,
                                    batched_passes=config.method.batched_passes)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        optimizer.step()
        if step >= warmup:
            elapsed += time.perf_counter() - start
    return elapsed / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", action="append", help="preset(s) to time (default: the U-Net and tiny SiT ones)")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help="comma-separated; name:sequential runs the passes as separate calls")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("overrides", nargs="*", help="config overrides applied to every row, e.g. train.bf16=true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    presets = args.preset or ["fashion_mnist_lt", "sit_tiny_fashion_mnist_lt"]
    print(f"batch {args.batch_size}, {args.steps} timed steps after {args.warmup} warm-up, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| preset | method | s/step | steps/s | images/s | x plain |")
    print("|---|---|---:|---:|---:|---:|")
    for preset in presets:
        baseline = None
        for method in args.methods.split(","):
            try:
                seconds = time_method(preset, method, args.batch_size, args.steps, args.warmup, args.overrides)
            except ValueError as error:  # e.g. OCLT with the flow objective
                print(f"| {preset} | {method} | n/a: {error} | | | |")
                continue
            baseline = seconds if method == "plain" else baseline
            ratio = f"{seconds / baseline:.2f}" if baseline else "-"
            print(f"| {preset} | {method} | {seconds:.3f} | {1 / seconds:.2f} | {args.batch_size / seconds:.0f} | "
                  f"{ratio} |", flush=True)


if __name__ == "__main__":
    main()
