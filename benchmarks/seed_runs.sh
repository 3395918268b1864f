#!/usr/bin/env bash
# The homework's experiment log, scaled down to fit a 2-core CPU: the same presets, but trained on a
# stratified 2,000-image subset (20 per class) for 6 epochs, validated every epoch on 1,000 held-out
# images (10 per class). Enough to show the contrasts (augmentation vs none, Adam lr 0.1 vs 0.001),
# not to reproduce the homework's figures. Then one table and one overlay plot with `c100 compare`.
#
#   bash benchmarks/seed_runs.sh [PRESET...]     # default: seed-r18-v1 seed-r18-v3 seed-r18-v4
set -euo pipefail
cd "$(dirname "$0")/.."
PRESETS=${*:-"seed-r18-v1 seed-r18-v3 seed-r18-v4"}
RUNS=benchmarks/runs/seed
C100=${C100:-.venv/bin/c100}
for p in $PRESETS; do
  rm -rf "$RUNS/$p"
  $C100 train --preset "$p" --out "$RUNS/$p" --epochs 6 --train-size 2000 --val-size 1000 --eval-every 1 \
    --data-dir "${CIFAR100_DATA:-data}"
done
# shellcheck disable=SC2046
$C100 compare $(for p in $PRESETS; do echo "$RUNS/$p"; done) --out docs/seed-compare.png \
  --md benchmarks/results/sweeps/00-seed-experiments/seed-compare.md
