"""Record a preset: train it on the real CIFAR-100 for each seed, evaluate the final model once on
the test set, and write NAME.json and NAME-sSEED-metrics.csv to benchmarks/results/records/ (+ NAME.log
via tee); a selection round goes to its own folder, --out benchmarks/results/sweeps/NN-topic. Then add
the JSON to benchmarks/results/index.yaml (benchmarks/table.py checks it).

wall_s counts everything from the start of training to the end of the test evaluation (data
loading, compilation, per-epoch validation, checkpoints included); validation and test run in the
config's eval_precision (fp32 unless the preset says otherwise); its parts are recorded apart:
train_s (the training clock), compile_s (one-time compilation and warm-up), eval_s. With
--no-test the test set is not read at all (recipe selection on the validation split).

    python benchmarks/record.py --preset cpu-fast --seeds 0 1 --target-acc 0.6221 --data-dir data
    python benchmarks/record.py --preset cpu-long --seeds 1 --append --data-dir data   # seed 0 ran earlier
    python benchmarks/record.py --preset seed --resume ...   # the same command again, after it was killed
    python benchmarks/record.py --preset cpu-fast --name select-32px --set resolutions= --no-test \\
        --out benchmarks/results/sweeps/13-topic
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch
from provenance import provenance  # benchmarks/ is on sys.path when a script there runs

from c100 import UserError, checkpoint, lock
from c100.config import resolve
from c100.device import resolve_precision
from c100.evaluate import evaluate, format_table
from c100.train import Trainer, resume_from, resume_point, setup_process, train

RESULTS = Path(__file__).resolve().parent / "results" / "records"  # current records; sweeps pass --out


def parse_sets(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        out[key] = value.split() if " " in value or value == "" else value  # "16 24 32" -> a list; "" -> []
    return out


def start_or_resume(args, overrides: dict, seed: int, run: Path) -> tuple[Trainer, bool]:
    """Train the seed's run from scratch, or with --resume continue the one a killed record left (its
    last.pt or config.yaml: one GPU call too short for the whole run, the next one finishes it)."""
    log = lambda line: print(line, flush=True)  # noqa: E731
    if args.resume and ((run / "last.pt").is_file() or (run / "config.yaml").is_file()):
        with lock.hold_run(run):  # read and continue under one lock, as `c100 train --resume` does
            cfg, state = resume_point(run, {"data_dir": args.data_dir})
            setup_process(cfg)
            print(f"resuming {run} at epoch {state['epoch'] if state else 0}", flush=True)
            return resume_from(run, cfg, state, log=log), True
    shutil.rmtree(run, ignore_errors=True)
    flags = {**overrides, "seed": seed, "data_dir": args.data_dir}
    if args.target_acc is not None:
        flags["target_acc"] = args.target_acc
    cfg = resolve(args.preset, None, flags)
    setup_process(cfg)
    return train(cfg, run, log=log), False


def record_seed(args, overrides: dict, seed: int, name: str, out_dir: Path) -> dict:
    run = Path(args.runs) / f"{name}-s{seed}"
    t0 = time.perf_counter()
    trainer, resumed = start_or_resume(args, overrides, seed, run)
    cfg = trainer.cfg
    train_end = time.perf_counter()
    # the test pass in the precision validation used (eval_precision; fp32 unless the preset says)
    eval_precision = resolve_precision(cfg.eval_precision, trainer.device)
    result = None if args.no_test else evaluate(run, "test", device=cfg.device, precision=eval_precision)
    wall_s = time.perf_counter() - t0
    if result:
        print(format_table(result), flush=True)
    shutil.copy(run / "metrics.csv", out_dir / f"{name}-s{seed}-metrics.csv")
    h = trainer.history
    target = trainer.target
    return {
        "seed": seed, "resumed": resumed,  # resumed: wall_s counts this process only; train_s the whole run
        "wall_s": round(wall_s, 1), "train_s": round(trainer.clock, 1),
        "compile_s": round(trainer.compile_s, 1),
        "val_eval_s": round(sum(r.get("eval_s") or 0 for r in h), 1),
        "test_eval_s": round(time.perf_counter() - train_end, 1) if result else None,
        "epochs": len(h), "steps": trainer.step, "final_val_acc": h[-1]["val_acc"],
        "test_top1": result["top1"] if result else None, "test_top5": result["top5"] if result else None,
        "test_superclass": result["superclass"] if result else None,
        "target_reached": target is not None,
        "time_to_target_s": target["train_s"] if target else None,
        "images_per_s": statistics.median(r["images_per_s"] for r in h),
        "precision": trainer.cfg.precision, "eval_precision": eval_precision, "config": trainer.cfg.to_dict(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cpu-fast")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--name", help="result name (default: the preset)")
    ap.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                    help="config overrides, e.g. epochs=2 (repeatable)")
    ap.add_argument("--target-acc", type=float, help="record when validation accuracy first reaches this")
    ap.add_argument("--no-test", action="store_true", help="do not read the test set (recipe selection)")
    ap.add_argument("--data-dir", default=os.environ.get("CIFAR100_DATA", "data"))
    ap.add_argument("--runs", default="benchmarks/runs", help="where the run folders go (git-ignored)")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(RESULTS), help="folder for the JSON and CSVs")
    ap.add_argument("--resume", action="store_true",
                    help="continue a seed's run folder that a killed record left (its last.pt) instead of starting "
                         "it again; its config comes from the run, so --preset/--set must name the same record")
    ap.add_argument("--append", action="store_true",
                    help="add these seeds to those already in NAME.json (a record longer than a session, one seed "
                         "at a time): only on the same kind of machine, with the same preset, overrides and target")
    args = ap.parse_args()
    name = args.name or args.preset
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    git = checkpoint.git_revision()  # the code that runs, read before anything can change it
    overrides = parse_sets(args.set)
    per_seed = earlier_seeds(out_dir / f"{name}.json", args, overrides) if args.append else []
    ran = provenance(record_device(), git)  # this invocation, kept with each of its seeds
    for seed in args.seeds:  # the JSON is rewritten after every seed: a run cut short keeps what finished
        per_seed.append({**record_seed(args, overrides, seed, name, out_dir), "git": git,
                         "command": ran["command"], "started": ran["date"]})
        result = summarise(args, name, overrides, git, per_seed)
        checkpoint.atomic_write_json(out_dir / f"{name}.json", result)
    print(json.dumps({k: v for k, v in result.items() if k != "per_seed"}, indent=2))
    return 0


def record_device() -> torch.device:
    """The device a record names: the GPU where there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def earlier_seeds(path: Path, args, overrides: dict) -> list[dict]:
    """The seeds already recorded in `path`, if the record they belong to is the one being extended."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"--append needs the record {path} ({type(e).__name__}); drop --append to start it") from None
    want = {"preset": args.preset, "overrides": overrides, "target": args.target_acc,
            "device": checkpoint.device_name(record_device())}
    for key, value in want.items():
        if earlier.get(key) != value:
            raise UserError(f"--append: {path} was recorded with {key} {earlier.get(key)!r}, this run has {value!r}; "
                            f"seeds of different records do not mix")
    again = sorted(set(args.seeds) & {p["seed"] for p in earlier["per_seed"]})
    if again:
        raise UserError(f"--append: seed {', '.join(map(str, again))} is already in {path}")
    return earlier["per_seed"]


def reproduce_command(argv: list[str], seeds: list[int]) -> str:
    """The invocation `argv` for every seed of the record at once, without --append: what remakes it whole
    (an appended record's `command` is the last session's, for its seeds only)."""
    out, in_seeds = [], False
    for a in argv:
        if in_seeds and not a.startswith("-"):
            continue
        in_seeds = a == "--seeds"
        if a == "--append" or in_seeds or a.startswith("--seeds="):
            continue
        out.append(a)
    return "python " + shlex.join([*out, "--seeds", *map(str, seeds)])


def summarise(args, name: str, overrides: dict, git: str | None, per_seed: list[dict]) -> dict:
    top1 = [p["test_top1"] for p in per_seed if p["test_top1"] is not None]
    val = [p["final_val_acc"] for p in per_seed if p["final_val_acc"] is not None]
    times = [p["time_to_target_s"] for p in per_seed if p["time_to_target_s"] is not None]
    return {
        "benchmark": name, "preset": args.preset, "overrides": overrides,
        **provenance(record_device(), git),
        "seeds": [p["seed"] for p in per_seed],
        "reproduce": reproduce_command(sys.argv, [p["seed"] for p in per_seed]),
        "precision": per_seed[0]["precision"], "eval_precision": per_seed[0]["eval_precision"],
        "epochs": per_seed[0]["epochs"],
        "time_budget": per_seed[0]["config"]["time_budget"],
        "per_seed": per_seed,
        "wall_s_mean": statistics.mean(p["wall_s"] for p in per_seed),
        "wall_s_max": max(p["wall_s"] for p in per_seed),
        "compile_s_mean": statistics.mean(p["compile_s"] for p in per_seed),
        "images_per_s": statistics.median(p["images_per_s"] for p in per_seed),
        "final_val_acc_mean": statistics.mean(val) if val else None,
        "final_val_acc_std": statistics.stdev(val) if len(val) > 1 else 0.0 if val else None,
        "test_top1": top1 or None,
        "test_top1_mean": statistics.mean(top1) if top1 else None,
        "test_top1_std": (statistics.stdev(top1) if len(top1) > 1 else 0.0) if top1 else None,
        "target": args.target_acc,
        "time_to_target_s": times or None,
        "target_reached": f"{len(times)}/{len(per_seed)} seeds" if args.target_acc else None,
        "seeds_planned": [p["seed"] for p in per_seed if p["seed"] not in args.seeds] + args.seeds,
    }


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except UserError as e:  # a bad --set or --preset: one line, as the c100 command prints it
        raise SystemExit(f"record.py: error: {e}") from None
