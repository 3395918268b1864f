"""Training speed of the cpu-fast step in fp32 and under bf16 autocast, side by side on this CPU.

The cpu-fast preset's real Trainer (stem frozen, channels_last, batch 64), fixed at one resolution,
its epoch a slice of --steps batches of the training split. For each resolution the two precisions
alternate round by round (fp32, bf16, fp32, bf16, ...) so the machine's drift hits both alike; one
warm-up round of each is discarded and medians are reported. `--precision auto` picks bf16 only
where the CPU has AVX512-BF16 or AMX (c100.device.cpu_has_native_bf16): elsewhere bf16 is emulated
and many times slower, so this script is only worth running where that check is true.

    python benchmarks/precision_speed.py --data-dir data
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from provenance import provenance  # benchmarks/ is on sys.path when a script there runs
from roofline import step_trainer

from c100 import checkpoint
from c100.device import cpu_has_native_bf16


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--res", type=int, nargs="+", default=[16, 24, 32])
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per timed round")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds of each, after one warm-up round")
    ap.add_argument("--out", default="benchmarks/results/records/precision-speed-cpu.json")
    args = ap.parse_args()

    rows = []
    for res in args.res:
        trainers = {p: step_trainer(args, res, False, p) for p in ("fp32", "bf16")}
        rounds = {p: [] for p in trainers}
        for r in range(args.rounds + 1):
            for p, t in trainers.items():
                ips = t.train_one_epoch()["images_per_s"]
                if r:
                    rounds[p].append(ips)
        ratio = statistics.median(b / f for f, b in zip(rounds["fp32"], rounds["bf16"], strict=True))
        row = {"res": res, "batch_size": trainers["fp32"].cfg.batch_size,
               "fp32_images_per_s": statistics.median(rounds["fp32"]),
               "bf16_images_per_s": statistics.median(rounds["bf16"]), "bf16_over_fp32": ratio,
               "fp32_rounds": rounds["fp32"], "bf16_rounds": rounds["bf16"]}
        rows.append(row)
        print(f"{res} px: fp32 {row['fp32_images_per_s']:.1f} img/s, bf16 {row['bf16_images_per_s']:.1f} img/s, "
              f"bf16/fp32 {ratio:.2f} (median of {args.rounds} rounds)", flush=True)

    result = {"benchmark": "precision-speed", **provenance(torch.device("cpu")), "threads": torch.get_num_threads(),
              "native_bf16": cpu_has_native_bf16(), "steps_per_round": args.steps, "rounds": args.rounds,
              "settings": rows}
    checkpoint.atomic_write_json(Path(args.out), result)
    print(json.dumps({k: v for k, v in result.items() if k != "settings"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
