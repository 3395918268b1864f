#!/usr/bin/env bash
# The homework's experiment log on a 2-core CPU: its seven presets (v1-v5, VGG16, ResNet34) trained on
# the full 45,000 / 5,000 split for a clock of their own each (default 600 s: "as many epochs as fit in
# about 10 minutes", issue 24), in the CPU's best precision (bf16 where it is native; the presets
# themselves say fp32, as the homework trained), validated after every epoch with the passes on the
# clock; then one table and one overlay plot with `c100 compare`. About 75 minutes for all seven.
#
#   bash benchmarks/seed_runs.sh [PRESET...]            # default: all seven
#   BUDGET=600 OUT=benchmarks/results/sweeps/14-seed-experiments bash benchmarks/seed_runs.sh
#   SMALL=1 bash benchmarks/seed_runs.sh seed-r18-v1 seed-r18-v3 seed-r18-v4
#       the scaled-down form of sweeps/00: 2,000 training images, 6 epochs, 1,000 validation images
#
# The test set is never read. Each run's output goes to OUT/seed-runs.log (tee), its metrics to
# OUT/PRESET-metrics.csv.
set -euo pipefail
cd "$(dirname "$0")/.."
PRESETS=${*:-"seed-r18-v1 seed-r18-v2 seed-r18-v3 seed-r18-v4 seed-r18-v5 seed-vgg16-v1 seed-r34-v1"}
RUNS=${RUNS:-benchmarks/runs/seed}
OUT=${OUT:-benchmarks/results/sweeps/14-seed-experiments}
C100=${C100:-.venv/bin/c100}
DATA=${CIFAR100_DATA:-data}
mkdir -p "$OUT"
for p in $PRESETS; do
  rm -rf "${RUNS:?}/$p"
  if [ -n "${SMALL:-}" ]; then
    args=(--epochs 6 --train-size 2000 --val-size 1000 --eval-every 1)
  else
    args=(--time-budget "${BUDGET:-600}" --precision auto --eval-precision auto --eval-every 1 --budget-includes-eval)
  fi
  echo "== $p: c100 train --preset $p ${args[*]}"
  $C100 train --preset "$p" --out "$RUNS/$p" "${args[@]}" --data-dir "$DATA" ${EXTRA:-}
  cp "$RUNS/$p/metrics.csv" "$OUT/$p-metrics.csv"
done 2>&1 | tee "$OUT/seed-runs.log"
# shellcheck disable=SC2046
$C100 compare $(for p in $PRESETS; do echo "$RUNS/$p"; done) --out "${PLOT:-docs/seed-compare.png}" \
  --md "$OUT/seed-compare.md"
