#!/usr/bin/env bash
# The GPU records in one command: probe training throughput at several batch sizes, then run the
# gpu-fast and gpu-best presets for the seeds that fit, each seed trained from scratch and its final
# model evaluated once on the test set. Results (JSON, logs, per-epoch CSVs) go to $OUT when set
# (the device machine returns at most 8 files, so the CSVs and per-batch probes travel in one
# tarball), else to benchmarks/results/records/gpu-DATE/ (add them to results/index.yaml).
#
#   bash benchmarks/gpu.sh                          # everything, defaults below
#   PARTS="fast" FAST_SEEDS="0 1 2 3" bash benchmarks/gpu.sh
#   PARTS="best" BEST_BUDGET=900 bash benchmarks/gpu.sh   # the 15-minute attempt
#   CPU dry run of the plumbing (synthetic data, seconds of training):
#   C100_ANY_SIZE=1 CIFAR100_DATA=/tmp/syn PROBE_BATCHES=32 PROBE_STEPS=2 FAST_SEEDS=0 \
#     EXTRA_SET="time_budget=3 compile=false val_size=100" OUT=/tmp/gpu-dry bash benchmarks/gpu.sh
#
# On the lent GPU machine (see ../shared/gpu/README.md), after staging the data:
#   bash .c100-3/stage.sh && bash benchmarks/gpu.sh
# Timing: probe ~1 min, gpu-fast ~40 s per seed (+ compilation), gpu-best BEST_BUDGET + ~1 min.
set -euo pipefail
cd "$(dirname "$0")/.."

PARTS=${PARTS:-"probe fast best"}
DATA=${CIFAR100_DATA:-/tmp/c100/data}
[ -d "$DATA/cifar-100-python" ] || DATA=data
FAST_SEEDS=${FAST_SEEDS:-"0 1 2"}
BEST_SEEDS=${BEST_SEEDS:-"0"}
BEST_BUDGET=${BEST_BUDGET:-300}
PROBE_BATCHES=${PROBE_BATCHES:-"256 512 1024"}
PROBE_STEPS=${PROBE_STEPS:-20}
EXTRA_SET=${EXTRA_SET:-}  # config overrides for both presets, e.g. for a CPU dry run of this script
DEST=${OUT:-benchmarks/results/records/gpu-$(date -u +%Y%m%d-%H%M)}
WORK=$(mktemp -d)
mkdir -p "$DEST"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python3}

{
  echo "date: $(date -u +%FT%TZ)  git: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} | tee "$DEST/gpu.log"

for part in $PARTS; do
  case $part in
    probe)
      for b in $PROBE_BATCHES; do
        $PY benchmarks/throughput.py --data-dir "$DATA" --batch-size "$b" --steps "$PROBE_STEPS" --rounds 5 \
          --out "$WORK/throughput-gpu-bs$b.json" 2>&1 | tee -a "$DEST/gpu.log"
      done ;;
    fast)
      # shellcheck disable=SC2086
      $PY benchmarks/record.py --preset gpu-fast --seeds $FAST_SEEDS --target-acc 0.75 --data-dir "$DATA" \
        --set $EXTRA_SET --out "$WORK" 2>&1 | tee "$DEST/gpu-fast.log" ;;
    best)
      name=gpu-best; [ "$BEST_BUDGET" = 300 ] || name=gpu-best-${BEST_BUDGET}s
      # shellcheck disable=SC2086
      $PY benchmarks/record.py --preset gpu-best --name "$name" --seeds $BEST_SEEDS --target-acc 0.80 \
        --set time_budget="$BEST_BUDGET" $EXTRA_SET --data-dir "$DATA" --out "$WORK" 2>&1 | tee "$DEST/$name.log" ;;
    *) echo "unknown part '$part' (use probe, fast, best)"; exit 2 ;;
  esac
done

cp "$WORK"/gpu-*.json "$DEST"/ 2>/dev/null || true
tar czf "$DEST/gpu-details.tgz" -C "$WORK" .
rm -rf "$WORK"
ls -l "$DEST"
