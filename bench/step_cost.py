"""Training step cost of each method relative to the plain objective, on the same model and batch.

Every variant gets its own copy of the same initial model and optimizer; the timed steps
alternate between the variants (plain, ccua, cheap ccua, plain, ccua, ...), so a change of the
machine's load hits all of them alike, and the median step time of each is reported with its
ratio to plain's. Prints a markdown table.

Example: python bench/step_cost.py --threads 1 --steps 6
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from ccua.build import build_methods, build_model, build_objective, build_optimizer, load_checked_config
from ccua.training.performance import configure_backends, maybe_compile, to_memory_format
from ccua.training.step import PassRunner, training_losses

#: label -> config overrides; "plain" must come first (the reference of the ratio)
VARIANTS: dict[str, list[str]] = {
    "plain": ["method.names=[plain]"],
    "ccua": ["method.names=[ccua]"],
    "ccua (separate calls)": ["method.names=[ccua]", "method.batched_passes=false"],
    "ccua ucl=1 al=1/8": ["method.names=[ccua]", "method.ccua.ucl_fraction=1.0",
                                  "method.ccua.uncond_fraction=0.125"],
    "ccua ucl=1/2 al=1/8": ["method.names=[ccua]", "method.ccua.ucl_fraction=0.5",
                                    "method.ccua.uncond_fraction=0.125"],
    "ccua ucl=1/4 al=1/4": ["method.names=[ccua]", "method.ccua.ucl_fraction=0.25",
                                    "method.ccua.uncond_fraction=0.25"],
    "cbdm": ["method.names=[cbdm]"],
    "oclt": ["method.names=[oclt]"],
    "dispersive": ["method.names=[dispersive]"],
}


class Variant:
    """One method's model copy, optimizer and step function on the shared batch.

    The train.* speed settings of its config apply as in training: bf16 autocast, channels-last,
    torch.compile, TF32, fused AdamW on CUDA.
    """

    def __init__(self, preset: str, overrides: list[str], model: torch.nn.Module, batch: tuple, num_classes: int,
                 device: torch.device):
        self.config = load_checked_config(preset, overrides)
        train = self.config.train
        self.device = device
        configure_backends(train.tf32)
        self.model = to_memory_format(copy.deepcopy(model).to(device), train.channels_last)
        self.runner = maybe_compile(PassRunner(self.model), train.compile)
        self.objective = build_objective(self.config.diffusion)
        self.methods = build_methods(self.config.method)
        self.optimizer = build_optimizer(self.model.parameters(), "adamw", 1e-4, 0.0, device)
        self.counts = torch.tensor([2.0**-c for c in range(num_classes)], device=device)
        self.x0, self.labels = (tensor.to(device) for tensor in batch)
        if train.channels_last and self.x0.dim() == 4:
            self.x0 = self.x0.contiguous(memory_format=torch.channels_last)
        self.times: list[float] = []

    def step(self, timed: bool) -> None:
        start = time.perf_counter()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.train.bf16):
            terms = training_losses(self.runner, self.objective, self.methods, self.x0, self.labels,
                                    self.model.null_label, self.counts, batched_passes=self.config.method.batched_passes)
        self.optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        if timed:
            self.times.append(time.perf_counter() - start)


def time_preset(preset: str, variants: dict[str, list[str]], batch_size: int | None, steps: int, warmup: int,
                overrides: list[str], device: str = "cpu") -> dict[str, float | str]:
    """Median seconds per step of each variant (or the reason it cannot run), timed in alternation.

    ``batch_size``: None = the preset's train.batch_size.
    """
    config = load_checked_config(preset, overrides)
    # the shape of the data without loading it (the cost does not depend on the pixels)
    grey = config.data.name in ("fashion_mnist", "mnist")
    channels = config.data.channels or (4 if config.data.name == "latents" else 1 if grey else 3)
    num_classes = 1000 if config.data.name == "latents" else 10
    res = config.data.resolution // 8 if config.data.name == "latents" else config.data.resolution
    batch_size = batch_size or config.train.batch_size
    torch.manual_seed(0)
    model = build_model(config.model, channels, num_classes, res)
    batch = (torch.randn(batch_size, channels, res, res).clamp(-1, 1), torch.randint(0, num_classes, (batch_size,)))
    built: dict[str, Variant] = {}
    results: dict[str, float | str] = {}
    for label, extra in variants.items():
        try:
            built[label] = Variant(preset, overrides + extra, model, batch, num_classes, torch.device(device))
        except ValueError as error:  # e.g. OCLT with the flow objective
            results[label] = f"n/a: {error}"
    for round_index in range(warmup + steps):
        for variant in built.values():
            variant.step(timed=round_index >= warmup)
    for label, variant in built.items():
        results[label] = statistics.median(variant.times)
    return {label: results[label] for label in variants}


def print_rows(preset: str, results: dict[str, float | str], batch_size: int, setting: str = "") -> None:
    baseline = results["plain"]
    for label, seconds in results.items():
        if isinstance(seconds, str):
            print(f"| {preset} | {setting} | {label} | {seconds} | | |")
            continue
        ratio = f"{seconds / baseline:.2f}" if isinstance(baseline, float) else "-"
        print(f"| {preset} | {setting} | {label} | {seconds:.3f} | {batch_size / seconds:.0f} | {ratio} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", action="append", help="preset(s) to time (default: the U-Net and tiny SiT ones)")
    parser.add_argument("--variants", default=None, help=f"comma-separated labels (default: all of {list(VARIANTS)})")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("overrides", nargs="*", help="config overrides applied to every row, e.g. train.bf16=true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    labels = args.variants.split(",") if args.variants else list(VARIANTS)
    unknown = [label for label in labels if label not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; valid: {list(VARIANTS)}")
    variants = {label: VARIANTS[label] for label in ["plain"] + [x for x in labels if x != "plain"]}
    presets = args.preset or ["fashion_mnist_lt", "sit_tiny_fashion_mnist_lt"]
    print(f"batch {args.batch_size}, median of {args.steps} alternating steps after {args.warmup} warm-up, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}")
    print("| preset | settings | method | s/step | images/s | x plain |")
    print("|---|---|---|---:|---:|---:|")
    for preset in presets:
        results = time_preset(preset, variants, args.batch_size, args.steps, args.warmup, args.overrides)
        print_rows(preset, results, args.batch_size, " ".join(args.overrides) or "default")


if __name__ == "__main__":
    main()
