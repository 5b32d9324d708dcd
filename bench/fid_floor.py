"""What "good" means: FID/KID/precision/recall of real held-out images against the training set.

Real Fashion-MNIST test images (balanced) are evaluated exactly as generated images would be,
against the balanced training split, with each feature network. Also times feature extraction
with and without bf16 autocast.
Example: python bench/fid_floor.py --per-class 50 --classifier .cache/ccua/classifiers/fashion_mnist-16px.pt
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ccua.config import DataConfig
from ccua.data import build_reference_set
from ccua.metrics import Reference, build_feature_net, evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=50, help="held-out test images per class")
    parser.add_argument("--max-reference", type=int, default=1000, help="training images (equal per class)")
    parser.add_argument("--resolution", type=int, default=16)
    parser.add_argument("--classifier", default=".cache/ccua/classifiers/fashion_mnist-16px.pt")
    parser.add_argument("--features", default="classifier,inception")
    parser.add_argument("--timing-images", type=int, default=32)
    args = parser.parse_args()
    data = DataConfig(name="fashion_mnist", resolution=args.resolution)
    test = build_reference_set(data, "test")
    rng = np.random.RandomState(0)
    picked = np.concatenate([rng.choice(np.flatnonzero(test.labels == c), args.per_class, replace=False)
                             for c in range(test.num_classes)])
    images = torch.stack([test.uint8_image(int(i)) for i in picked]).permute(0, 2, 3, 1).numpy()
    labels = test.labels[picked]
    reference = Reference.from_config(data, "train")
    print(f"Fashion-MNIST {args.resolution}x{args.resolution}: {len(images)} test images vs "
          f"{args.max_reference} balanced training images")
    print("| features | FID | KID x1e3 | precision | recall | FID head | FID body | FID tail | class acc. |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.features.split(","):
        net = build_feature_net(name, path=args.classifier if name == "classifier" else None, progress=False)
        result = evaluate(images, labels, reference, None, net, cache_dir=".cache/ccua/features", per_class=False,
                          max_reference=args.max_reference)
        o, g = result["overall"], result["groups"]
        accuracy = o.get("class_accuracy")
        print(f"| {name} | {o['fid']:.3f} | {1e3 * o['kid_mean']:.3f} | {o['precision']:.3f} | {o['recall']:.3f} | "
              f"{g['head']['fid']:.2f} | {g['body']['fid']:.2f} | {g['tail']['fid']:.2f} | "
              f"{'-' if accuracy is None else f'{accuracy:.3f}'} |", flush=True)
    print()
    print("| features | bf16 | images/s |")
    print("|---|---|---:|")
    batch = images[: args.timing_images]
    for name in args.features.split(","):
        for bf16 in (False, True):
            net = build_feature_net(name, path=args.classifier if name == "classifier" else None, bf16=bf16,
                                    progress=False)
            net.features(batch[:2])  # warm-up
            start = time.perf_counter()
            net.features(batch)
            print(f"| {name} | {bf16} | {len(batch) / (time.perf_counter() - start):.1f} |", flush=True)


if __name__ == "__main__":
    main()
