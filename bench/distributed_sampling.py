"""Wall time of sampling and feature extraction on 1 vs several processes (torchrun, one machine).

Three measurements per process count, each a fresh ``torchrun --standalone --nproc_per_node P``:

- ``ccua sample`` as a user runs it, start to end (imports, loading, sampling, writing one set);
- the sampling alone inside such a launch (``generate_uint8``, the chunks shared by the processes);
- the feature extraction alone (``FeatureNet.extract`` on the same number of images, shared).

The processes of one launch share the machine: on a CPU each gets ``--threads`` threads (1 by
default: P processes use P cores), on GPUs each its own GPU (``--device cuda``). Without
``--run`` the model is the preset's at its initial weights (a checkpoint written by 0 training
steps): the cost of sampling does not depend on the weights. Prints a markdown table.

Example: python bench/distributed_sampling.py --processes 1,2 --per-class 6 --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="fashion_mnist_lt", help="model and data (without --run)")
    parser.add_argument("--run", default=None, help="a run folder or checkpoint to sample instead")
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts")
    parser.add_argument("--per-class", type=int, default=6, help="samples per class")
    parser.add_argument("--steps", type=int, default=20, help="sampler steps")
    parser.add_argument("--batch-size", type=int, default=16, help="sampling chunk (sample.batch_size)")
    parser.add_argument("--features", default="inception", help="feature network (inception: the FID one)")
    parser.add_argument("--feature-images", type=int, default=64, help="images through the feature network")
    parser.add_argument("--threads", type=int, default=1, help="threads per process on a CPU")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # a JSON file: measure inside a launch
    return parser.parse_args()


def _checkpoint(args: argparse.Namespace, folder: Path) -> str:
    """--run, or the preset's initial weights written by a training of 0 steps."""
    if args.run:
        return args.run
    from ccua.build import load_checked_config
    from ccua.training import train

    config = load_checked_config(args.preset, ["train.steps=0", f"train.out_dir={folder}", "train.progress=false"])
    return str(train(config, device="cpu"))


def _launch(processes: int, arguments: list[str], threads: int) -> float:
    """Seconds of one torchrun launch of ``arguments`` (python -m ...)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = str(threads)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               *arguments]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds


def _measure_inside(settings_file: str) -> None:
    """In every process of a launch: time the shared sampling and the shared extraction."""
    from dataclasses import replace

    from ccua.distributed import barrier, process_group
    from ccua.generate import LoadedModel
    from ccua.metrics import build_feature_net

    settings = json.loads(Path(settings_file).read_text())
    torch.set_num_threads(settings["threads"])
    with process_group(settings["device"]) as dist:
        loaded = LoadedModel(settings["checkpoint"], device=dist.device)
        sample = replace(loaded.config.sample, steps=settings["steps"], batch_size=settings["batch_size"])
        labels = torch.arange(len(loaded.class_counts)).repeat_interleave(settings["per_class"])
        net = build_feature_net(settings["features"], device=dist.device, progress=False)
        images = np.random.default_rng(0).integers(0, 256, (settings["feature_images"], *loaded.data_shape[1:],
                                                            loaded.data_shape[0]), dtype=np.uint8)
        seconds = {}
        for name, work in (("sampling", lambda: loaded.sample_uint8(labels, sample, progress=False, dist=dist)),
                           ("features", lambda: net.extract(images, want_logits=False, dist=dist))):
            barrier(dist)
            start = time.perf_counter()
            work()
            barrier(dist)
            seconds[name] = time.perf_counter() - start
        if dist.is_main:
            Path(settings["result"]).write_text(json.dumps(seconds))


def main() -> None:
    args = _parse()
    if args.worker:
        _measure_inside(args.worker)
        return
    counts = [int(p) for p in args.processes.split(",")]
    rows: dict[str, dict[int, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        checkpoint = _checkpoint(args, folder)
        for processes in counts:
            sample_args = ["-m", "ccua.cli", "sample", checkpoint, "--out", str(folder / f"samples{processes}"),
                           "--per-class", str(args.per_class), "--sampler-steps", str(args.steps), "--batch-size",
                           str(args.batch_size), "--no-png", "--device", args.device]
            rows.setdefault("`ccua sample`, whole command", {})[processes] = _launch(processes, sample_args,
                                                                                     args.threads)
            settings = {**vars(args), "checkpoint": checkpoint, "result": str(folder / "seconds.json")}
            (folder / "settings.json").write_text(json.dumps(settings))
            _launch(processes, [__file__, "--worker", str(folder / "settings.json")], args.threads)
            for name, seconds in json.loads((folder / "seconds.json").read_text()).items():
                rows.setdefault(name, {})[processes] = seconds
        images = json.loads((folder / f"samples{counts[0]}" / "sample_info.json").read_text())["num_samples"]
    _print_table(args, rows, counts, images)


def _print_table(args: argparse.Namespace, rows: dict[str, dict[int, float]], counts: list[int], images: int) -> None:
    what = {"`ccua sample`, whole command": f"{images} images, {args.steps} steps, chunks of {args.batch_size}",
            "sampling": "the same sampling inside the launch",
            "features": f"{args.feature_images} images through {args.features}"}
    header = " | ".join(f"{p} process{'es' if p > 1 else ''}" for p in counts)
    print(f"\nDevice: {args.device}, {args.threads} thread(s) per process; model: {args.run or args.preset}\n")
    print(f"| work | what | {header} | speed-up {counts[0]} -> {counts[-1]} |")
    print("|---|---|" + "---:|" * (len(counts) + 1))
    for name, seconds in rows.items():
        cells = " | ".join(f"{seconds[p]:.2f} s" for p in counts)
        print(f"| {name} | {what[name]} | {cells} | {seconds[counts[0]] / seconds[counts[-1]]:.2f}x |")


if __name__ == "__main__":
    main()
