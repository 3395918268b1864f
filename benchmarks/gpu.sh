#!/usr/bin/env bash
# The GPU records in one command, in priority order, each part's results written to $OUT as soon as the
# part ends (a run cut short keeps what finished; record.py also rewrites its JSON after every seed):
#   probe  training img/s of ResNet18 at several batch sizes (bf16, eager: trainer and bare loop), and
#          eager vs compiled at one batch                                     -> probe.json
#   fast   the gpu-fast preset, FAST_SEEDS                                      -> gpu-fast.json, .tgz
#   best   the gpu-best preset, BEST_SEEDS, and its weights (fp16 safetensors, split in parts of at most
#          15 MiB; the sha256 and the model card are in gpu-best.tgz)        -> gpu-best.json, .tgz, parts
#   seed   the homework's `seed` preset at full length (needs a GPU run of its own) -> seed.json, .tgz
# Everything printed also goes to gpu.log. At most 8 files come back from the device machine: probe,
# fast and best leave exactly 8 (gpu.log, probe.json, 2 x (JSON + tgz), 2 weight parts).
#
#   bash benchmarks/gpu.sh                           # probe, fast, best (~9 min on an H100/H200)
#   PARTS=seed bash benchmarks/gpu.sh                # the homework's 150 epochs, alone
#   PARTS="best" BEST_BUDGET=900 bash benchmarks/gpu.sh
#   DEADLINE_S=540 bash benchmarks/gpu.sh          # end within 540 s: best's clock shrinks to what is left
#   RECORD_ARGS=--resume PARTS=seed bash benchmarks/gpu.sh   # a second call finishes the seed run the first
#                                                    # call's limit cut (the run folder stays while warm)
# A part that fails is logged and the next one runs (the exit status says whether any failed): one
# device lease rarely allows a second try.
# Joining the returned weights:   cat gpu-best-s0.safetensors.part-* > gpu-best-s0.safetensors &&
#   tar xzf gpu-best.tgz && sha256sum -c gpu-best-s0.safetensors.sha256
#
# On the lent GPU machine (see ../shared/gpu/README.md), after staging the data:
#   bash .c100-3/stage.sh && bash benchmarks/gpu.sh
# tests/test_benchmarks.py runs every part as a CPU dry run on synthetic data, seconds of training (the
# compiled probe, minutes of compilation on a CPU, left out; see DRY_RUN below).
set -uo pipefail
cd "$(dirname "$0")/.."

PARTS=${PARTS:-"probe fast best"}
DATA=${CIFAR100_DATA:-/tmp/c100/data}
[ -d "$DATA/cifar-100-python" ] || DATA=data
FAST_SEEDS=${FAST_SEEDS:-"0 1 2"}
BEST_SEEDS=${BEST_SEEDS:-"0"}
BEST_BUDGET=${BEST_BUDGET:-300}
PROBE_BATCHES=${PROBE_BATCHES:-"256 512 1024"}
PROBE_ARGS=${PROBE_ARGS:-"--steps 20 --rounds 5"}
PROBE_COMPILE_BATCH=${PROBE_COMPILE_BATCH-512}  # eager vs compiled at this batch (empty: skip)
EXTRA_SET=${EXTRA_SET:-}  # config overrides for every preset, e.g. for the CPU dry run
RECORD_ARGS=${RECORD_ARGS:-}  # more record.py flags, e.g. --resume: finish the runs a cut-off call left
RUNS=${RUNS:-benchmarks/runs}
DEST=${OUT:-benchmarks/results/records/gpu-$(date -u +%Y%m%d-%H%M)}
PART_MIB=15
DEADLINE_S=${DEADLINE_S:-}  # seconds from now by which the whole script must end (empty: no limit)
BEST_RESERVE_S=${BEST_RESERVE_S:-120}  # what best needs beside its clock: compilation, test pass, export
START=$SECONDS
FAILS=$(mktemp)  # the parts that failed, one per line (parts run in subshells)
mkdir -p "$DEST" || exit 1
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python3}
LOG="$DEST/gpu.log"

{
  echo "date: $(date -u +%FT%TZ)  git: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)  parts: $PARTS"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} | tee "$LOG"

# record PRESET NAME SEEDS [--set ...]: train and test each seed; NAME.json lands in $DEST at once, the
# per-epoch CSVs in NAME.tgz when the part ends
record() {
  local preset=$1 name=$2 seeds=$3 work
  shift 3
  work=$(mktemp -d)
  # shellcheck disable=SC2086
  $PY benchmarks/record.py --preset "$preset" --name "$name" --seeds $seeds --data-dir "$DATA" --runs "$RUNS" \
    --out "$DEST" "$@" $RECORD_ARGS 2>&1 | tee -a "$LOG" >&2 || echo "$name" >> "$FAILS"
  mv "$DEST/$name"-s*-metrics.csv "$work"/ 2>/dev/null || true
  echo "$work"
}

pack() {  # pack NAME WORKDIR: the part's details as one file
  tar czf "$DEST/$1.tgz" -C "$2" . && rm -rf "$2"
}

for part in $PARTS; do
  echo "== $part ($(date -u +%T))" | tee -a "$LOG"
  case $part in
    probe)
      work=$(mktemp -d)
      for b in $PROBE_BATCHES; do
        # shellcheck disable=SC2086
        $PY benchmarks/throughput.py --data-dir "$DATA" --batch-size "$b" $PROBE_ARGS \
          --out "$work/throughput-bs$b.json" 2>&1 | tee -a "$LOG" || echo "probe bs$b" >> "$FAILS"
      done
      if [ -n "$PROBE_COMPILE_BATCH" ]; then
        $PY benchmarks/compile_speed.py --data-dir "$DATA" --batch-size "$PROBE_COMPILE_BATCH" --steps 10 --rounds 3 \
          --out "$work/compile-bs$PROBE_COMPILE_BATCH.json" 2>&1 | tee -a "$LOG" || echo "probe compile" >> "$FAILS"
      fi
      $PY -c "import json, sys; json.dump([json.load(open(f)) for f in sys.argv[1:]], open('$DEST/probe.json', 'w'), indent=1)" \
        "$work"/*.json
      rm -rf "$work" ;;
    fast)
      # shellcheck disable=SC2086
      work=$(record gpu-fast gpu-fast "$FAST_SEEDS" --target-acc 0.75 --set $EXTRA_SET | tail -n 1)
      pack gpu-fast "$work" ;;
    best)
      budget=$BEST_BUDGET
      if [ -n "$DEADLINE_S" ]; then  # the clock that still fits before the deadline, per seed
        n=$(echo $BEST_SEEDS | wc -w)
        fits=$(( (DEADLINE_S - (SECONDS - START)) / n - BEST_RESERVE_S ))
        [ "$fits" -lt "$budget" ] && budget=$fits
        echo "best: time_budget $budget s (asked $BEST_BUDGET; $((DEADLINE_S - (SECONDS - START))) s left)" | tee -a "$LOG"
        if [ "$budget" -lt 20 ]; then
          echo "best: skipped, too little time left" | tee -a "$LOG"; echo best >> "$FAILS"; continue
        fi
      fi
      # shellcheck disable=SC2086
      work=$(record gpu-best gpu-best "$BEST_SEEDS" --target-acc 0.80 --set time_budget="$budget" $EXTRA_SET \
        | tail -n 1)
      for seed in $BEST_SEEDS; do
        w="gpu-best-s$seed.safetensors"
        if ! $PY -m c100 export "$RUNS/gpu-best-s$seed" --half --out "$work/$w" 2>&1 | tee -a "$LOG"; then
          echo "best export s$seed" >> "$FAILS"; continue
        fi
        (cd "$work" && sha256sum "$w" > "$w.sha256" && cat "$w.sha256") | tee -a "$LOG"
        split -b "${PART_MIB}M" -d "$work/$w" "$DEST/$w.part-"
        rm "$work/$w"
      done
      pack gpu-best "$work" ;;
    seed)
      # shellcheck disable=SC2086
      work=$(record seed seed 0 --target-acc 0.6221 ${EXTRA_SET:+--set $EXTRA_SET} | tail -n 1)
      pack seed "$work" ;;
    *) echo "unknown part '$part' (use probe, fast, best, seed)" | tee -a "$LOG"; exit 2 ;;
  esac
  ls -l "$DEST" | tee -a "$LOG"
done
if [ -s "$FAILS" ]; then
  echo "failed: $(tr '\n' ' ' < "$FAILS")($((SECONDS - START)) s)" | tee -a "$LOG"
  exit 1
fi
echo "all parts done in $((SECONDS - START)) s" | tee -a "$LOG"
# DRY_RUN (what the test runs, on the CPU, in about a minute):
#   CIFAR100_DATA=SYNTHETIC_DIR PARTS="probe fast best seed" PROBE_BATCHES=32 PROBE_ARGS="--steps 2 --rounds 1
#   --no-check-size" FAST_SEEDS=0 EXTRA_SET="time_budget=2 compile=false precision=fp32 ..." bash benchmarks/gpu.sh
