"""GPU step cost of plain, CCUA and the cheaper CCUA at the paper's scale, with the speed settings.

Presets: cifar10_lt (the 35.7M-parameter U-Net, batch 128, 32x32x3) and sit_s2_imagenet_lt256
(SiT-S/2 on 32x32x4 latents, the preset's batch). For each setting row (fp32, TF32, bf16,
bf16 + channels-last, bf16 + torch.compile) the three methods are timed in alternation and the
median step time is printed with its ratio to plain. Random data of the right shape: the cost
of a step does not depend on the pixel values.

Runs in about 3-5 minutes on one H100 (compilation included); stops adding rows after
--budget seconds. Example:
    python bench/gpu_step_cost.py                       # on a CUDA machine
    python bench/gpu_step_cost.py --device cpu --presets fashion_mnist_lt --batch-size 16 --steps 2   # a smoke run
"""

from __future__ import annotations

import argparse
import time

import torch
from step_cost import print_rows, time_preset

METHODS = {
    "plain": ["method.names=[plain]"],
    "ccua": ["method.names=[ccua]"],
    "ccua cheap (1/4)": ["method.names=[ccua]", "method.ccua.uncond_fraction=0.25", "method.ccua.ucl_fraction=0.25"],
}
SETTINGS = {
    "fp32": ["train.tf32=false"],
    "tf32": ["train.tf32=true"],
    "bf16": ["train.bf16=true"],
    "bf16 channels-last": ["train.bf16=true", "train.channels_last=true"],
    "bf16 compile": ["train.bf16=true", "train.compile=true"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="cifar10_lt,sit_s2_imagenet_lt256")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated of {list(SETTINGS)}")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=None, help="default: each preset's train.batch_size")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation happens here)")
    parser.add_argument("--budget", type=float, default=270.0, help="seconds after which no new row is started")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU machine, or --device cpu for a smoke run")
    name = torch.cuda.get_device_name() if args.device == "cuda" else torch.backends.cpu.get_cpu_capability()
    print(f"{name}, torch {torch.__version__}, median of {args.steps} alternating steps after {args.warmup} warm-up")
    print("| preset | settings | method | s/step | images/s | x plain |")
    print("|---|---|---|---:|---:|---:|")
    start = time.perf_counter()
    for preset in args.presets.split(","):
        for setting in args.settings.split(","):
            if time.perf_counter() - start > args.budget:
                print(f"| {preset} | {setting} | (skipped: over the {args.budget:.0f} s budget) | | | |")
                continue
            if "channels-last" in setting and preset.startswith("sit"):
                continue  # a transformer has no convolutions after the patch embedding
            overrides = SETTINGS[setting]
            results = time_preset(preset, METHODS, args.batch_size, args.steps, args.warmup, overrides, args.device)
            print_rows(preset, results, _batch_size(preset, args.batch_size), setting)
            if args.device == "cuda":
                torch.cuda.empty_cache()


def _batch_size(preset: str, given: int | None) -> int:
    from ccua.config import load_config

    return given or load_config(preset).train.batch_size


if __name__ == "__main__":
    main()
