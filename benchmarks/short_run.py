"""A short real run: train a preset for a few epochs on the real CIFAR-100, then evaluate the final
model once on the test set. Records wall time (training, evaluation) and test top-1 per seed.

    python benchmarks/short_run.py --preset default --epochs 2 --seeds 0 --data-dir data
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from c100 import checkpoint
from c100.config import resolve
from c100.evaluate import evaluate_run, format_table
from c100.train import train


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--runs", default="benchmarks/runs", help="where the run folders go (git-ignored)")
    ap.add_argument("--name", help="result name (default short-PRESET-EPOCHSep)")
    args = ap.parse_args()
    name = args.name or f"short-{args.preset}-{args.epochs}ep"
    git = checkpoint.git_revision()  # the code that runs, read before anything can change it
    per_seed = []
    for seed in args.seeds:
        run = Path(args.runs) / f"{name}-s{seed}"
        shutil.rmtree(run, ignore_errors=True)
        cfg = resolve(args.preset, None, {"epochs": args.epochs, "seed": seed, "data_dir": args.data_dir})
        t0 = time.perf_counter()
        trainer = train(cfg, run, log=lambda line: print(line, flush=True))
        train_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        r = evaluate_run(run, "test")
        eval_s = time.perf_counter() - t1
        print(format_table(r), flush=True)
        shutil.copy(run / "metrics.csv", Path("benchmarks/results") / f"{name}-s{seed}-metrics.csv")
        per_seed.append({"seed": seed, "train_s": round(train_s, 1), "eval_s": round(eval_s, 1),
                         "wall_s": round(train_s + eval_s, 1), "test_top1": r["top1"], "test_top5": r["top5"],
                         "test_superclass": r["superclass"], "final_val_acc": trainer.history[-1]["val_acc"],
                         "images_per_s_median": statistics.median(h["images_per_s"] for h in trainer.history)})
    top1 = [p["test_top1"] for p in per_seed]
    result = {
        "benchmark": name, "preset": args.preset, "epochs": args.epochs,
        "command": "python " + " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": checkpoint.device_name(trainer.device), "torch": torch.__version__,
        "precision": trainer.cfg.precision, "git": git, "seeds": args.seeds,
        "per_seed": per_seed,
        "test_top1_mean": statistics.mean(top1),
        "test_top1_std": statistics.stdev(top1) if len(top1) > 1 else 0.0,
        "wall_s_mean": statistics.mean(p["wall_s"] for p in per_seed),
    }
    checkpoint.atomic_write_json(Path("benchmarks/results") / f"{name}.json", result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
