#!/usr/bin/env bash
# The demo: set up, train CCUA on Fashion-MNIST-LT (16x16, CPU, a few minutes), then sample and
# evaluate the run per head/body/tail group with the Fashion-MNIST domain classifier's features.
# It trains the cheaper CCUA (the unconditional pass on a quarter of each batch: about 1.3x the cost
# of a plain step instead of 2x; docs/methods.md). Extra arguments are config overrides for the
# training, e.g. `bash scripts/demo.sh train.steps=300`, or the full method:
# `bash scripts/demo.sh method.ccua.uncond_fraction=1 method.ccua.ucl_fraction=1`.
# Its DDIM clips the predicted x0 to [-1, 1] (sample.clip_x0=true; the released sampler does not):
# after 700 steps about half of the unclipped samples leave the pixel range and come out as speckle.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
CCUA=.venv/bin/ccua
OUT=${DEMO_OUT:-runs/demo}

echo "== training (ccua train fashion_mnist_lt) =="
$CCUA data fashion_mnist_lt
$CCUA train fashion_mnist_lt train.out_dir="$OUT" method.ccua.ucl_fraction=0.25 method.ccua.uncond_fraction=0.25 \
  sample.clip_x0=true "$@" | tee /tmp/ccua_demo_train.$$
RUN=$(sed -n 's/^run folder: //p' /tmp/ccua_demo_train.$$ | tail -n 1)
rm -f /tmp/ccua_demo_train.$$

CLASSIFIER=.cache/ccua/classifiers/fashion_mnist-16px.pt
if [[ ! -f $CLASSIFIER ]]; then
  echo "== the domain classifier for FID-style features (ccua features train) =="
  $CCUA features train fashion_mnist_lt --out "$CLASSIFIER"
fi

echo "== evaluation (ccua evaluate) =="
$CCUA evaluate "$RUN" --features classifier --feature-path "$CLASSIFIER" --per-class 50 --sampler-steps 25

echo
echo "run folder:        $RUN"
echo "per-class samples: $(ls "$RUN"/samples/grid_*.png | tail -n 1)  (rows: classes head to tail)"
echo "loss curves:       $RUN/loss_curves.png"
echo "tensorboard:       .venv/bin/tensorboard --logdir $RUN/tensorboard"
