"""Does torch.compile pay for training? The c100 trainer eager vs compiled, side by side in one process:
the one-time compilation (Trainer.warm_up) is measured apart, then rounds alternate (eager, compiled,
eager, ...) over the same first batches of an epoch of the real training split (Trainer.run_steps) at one
resolution; medians are reported,
with the break-even training time (compile_s / (1 - eager_time / compiled_time)).

    python benchmarks/compile_speed.py --data-dir data --res 16 --steps 6 --rounds 5
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from provenance import provenance  # benchmarks/ is on sys.path when a script there runs
from throughput import benchmark_trainer
from timing import alternate, median, ratio_median

from c100 import checkpoint


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--res", type=int, default=32, help="training resolution in pixels")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per round")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds of each")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="benchmarks/results/records/compile-cpu.json")
    args = ap.parse_args()

    fixed = {"resolutions": [args.res]}  # one training resolution
    eager, compiled = benchmark_trainer(args, compile=False, **fixed), benchmark_trainer(args, compile=True, **fixed)
    compile_s = compiled.warm_up()
    eager.warm_up()  # the same few steps, so both start from equally warm kernels
    print(f"compile + warm-up: {compile_s:.1f} s", flush=True)
    speeds = alternate({"eager": lambda: eager.run_steps(args.steps)["images_per_s"],
                        "compiled": lambda: compiled.run_steps(args.steps)["images_per_s"]},
                       args.rounds, warmup=0, log=lambda line: print(line, flush=True))  # warm_up() did it
    rows = [{"eager": e, "compiled": c, "ratio": c / e} for e, c in zip(speeds["eager"], speeds["compiled"],
                                                                       strict=True)]
    ratio = ratio_median(speeds["compiled"], speeds["eager"])
    result = {
        "benchmark": "compile-speed", **provenance(eager.device),
        "model": args.model, "batch_size": args.batch_size, "res": args.res, "precision": eager.cfg.precision,
        "compile_s": compile_s, "rounds": rows,
        "eager_images_per_s": median(speeds["eager"]),
        "compiled_images_per_s": median(speeds["compiled"]),
        "ratio_median": ratio,
        "break_even_train_s": compile_s / (1 - 1 / ratio) if ratio > 1 else None,
    }
    checkpoint.atomic_write_json(Path(args.out), result)
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
