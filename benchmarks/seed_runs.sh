#!/usr/bin/env bash
# The homework's experiment log on a 2-core CPU: its seven presets (v1-v5, VGG16, ResNet34) on the full
# 45,000 / 5,000 split, validated after every epoch, then one table and one overlay plot with
# `c100 compare`. The test set is never read. Three forms:
#
#   EPOCHS=2 bash benchmarks/seed_runs.sh [PRESET...]   # default: all seven
#       a fixed number of epochs each (2 = what 600 s of bf16 gives the homework's ResNet18 on a 2-core
#       EPYC), in the homework's own fp32: the curves do not depend on the machine's speed, so the runs
#       may finish on any CPU and over several sessions. Rerun the same command: finished runs are
#       kept, a run killed mid-way resumes exactly from its last epoch (`c100 train --resume`).
#   BUDGET=600 bash benchmarks/seed_runs.sh [PRESET...]
#       a clock of their own each ("as many epochs as fit in about 10 minutes", issue 24), in the CPU's
#       best precision (bf16 where it is native), with the validation passes on the clock; each run
#       starts afresh. About 75 minutes for all seven.
#   SMALL=1 bash benchmarks/seed_runs.sh seed-r18-v1 seed-r18-v3 seed-r18-v4
#       the scaled-down form of sweeps/00: 2,000 training images, 6 epochs, 1,000 validation images
#
# Output: OUT/seed-runs.log (appended to in the EPOCHS form, which spans sessions), OUT/PRESET-metrics.csv
# per run, OUT/seed-compare.md and PLOT.
set -euo pipefail
cd "$(dirname "$0")/.."
PRESETS=${*:-"seed-r18-v1 seed-r18-v2 seed-r18-v3 seed-r18-v4 seed-r18-v5 seed-vgg16-v1 seed-r34-v1"}
RUNS=${RUNS:-benchmarks/runs/seed}
OUT=${OUT:-benchmarks/results/sweeps/14-seed-experiments}
C100=${C100:-.venv/bin/c100}
PYTHON=${PYTHON:-.venv/bin/python}
DATA=${CIFAR100_DATA:-data}
mkdir -p "$OUT"
if [ -n "${SMALL:-}" ]; then
  args=(--epochs 6 --train-size 2000 --val-size 1000 --eval-every 1)
elif [ -n "${EPOCHS:-}" ]; then
  args=(--epochs "$EPOCHS" --precision fp32 --eval-precision fp32 --eval-every 1)
else
  args=(--time-budget "${BUDGET:-600}" --precision auto --eval-precision auto --eval-every 1 --budget-includes-eval)
fi
epochs_done() {  # rows of a run's metrics.csv (one per finished epoch), 0 without one
  if [ -f "$1/metrics.csv" ]; then echo $(($(wc -l < "$1/metrics.csv") - 1)); else echo 0; fi
}
ours() {  # a run of this form: EPOCHS epochs, no clock (not one left by another form)
  [ -f "$1/config.yaml" ] && grep -qx "epochs: $EPOCHS" "$1/config.yaml" && grep -qx "time_budget: 0.0" "$1/config.yaml"
}
for p in $PRESETS; do
  run="$RUNS/$p"
  echo "== $(date -u +%FT%TZ) on $($PYTHON -c 'import torch; from c100 import checkpoint
print(checkpoint.device_name(torch.device("cpu")))' 2>/dev/null || echo 'an unnamed CPU')"
  if [ -n "${EPOCHS:-}" ] && ours "$run" && [ "$(epochs_done "$run")" -ge "$EPOCHS" ]; then
    echo "== $p: finished earlier ($(epochs_done "$run") epochs in $run)"
  elif [ -n "${EPOCHS:-}" ] && ours "$run"; then
    echo "== $p: c100 train --resume $run (at epoch $(epochs_done "$run") of $EPOCHS)"
    $C100 train --resume "$run" --data-dir "$DATA"
  else
    rm -rf "${run:?}"
    echo "== $p: c100 train --preset $p ${args[*]}"
    $C100 train --preset "$p" --out "$run" "${args[@]}" --data-dir "$DATA" ${EXTRA:-}
  fi
  cp "$run/metrics.csv" "$OUT/$p-metrics.csv"
done 2>&1 | if [ -n "${EPOCHS:-}" ]; then tee -a "$OUT/seed-runs.log"; else tee "$OUT/seed-runs.log"; fi
# shellcheck disable=SC2046
$C100 compare $(for p in $PRESETS; do echo "$RUNS/$p"; done) --out "${PLOT:-docs/seed-compare.png}" \
  --md "$OUT/seed-compare.md"
