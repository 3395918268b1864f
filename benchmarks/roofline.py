"""How close the cpu-fast training step runs to what this CPU can compute at all.

Counts the multiply-adds of every convolution and linear layer in one real training step of the
trainer (forward, and the backward it actually runs: the weight gradient where the weight trains, the
input gradient where something before it trains), times the step, and sets the achieved rate
against the fp32 matrix-multiply rate measured in the same process (a large torch.mm, oneDNN/MKL's
best case). If the step already runs near that rate, faster kernels cannot buy the missing epochs:
only fewer multiply-adds per useful image can. BatchNorm, ReLU, additions and the optimizer are not
counted (they are a few percent of the multiply-adds' time in a profile), so the achieved rate is a
lower bound. Measurements alternate (matmul, step, matmul, step, ...) and medians are reported.

    python benchmarks/roofline.py --data-dir data
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn
from provenance import provenance  # benchmarks/ is on sys.path when a script there runs
from throughput import slice_epoch

from c100 import checkpoint
from c100.config import resolve
from c100.models.resnet import early_parameters
from c100.train import Trainer, build_trainer


def matmul_gflops(n: int = 4096, reps: int = 2) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def nominal_peak_gflops() -> float | None:
    """Cores x clock (from /proc/cpuinfo) x 32 fp32 FLOP per cycle: two 8-lane FMA units per core, as
    AVX2 AMD Zen 2-4 and Intel cores since Haswell have. An assumption about the hidden CPU model."""
    try:
        mhz = [float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
               if line.startswith("cpu MHz")]
    except OSError:
        return None
    return torch.get_num_threads() * statistics.median(mhz) * 32 / 1000 if mhz else None


def count_macs(trainer: Trainer) -> dict:
    """Multiply-adds of one training step (one batch), forward and backward, counted by hooks."""
    fwd, bwd = [0], [0]

    def hook(m: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        x = inputs[0]
        per_out = m.weight[0].numel() if isinstance(m, nn.Conv2d) else m.in_features  # MACs per output value
        macs = out.numel() * per_out
        fwd[0] += macs
        bwd[0] += macs * (int(m.weight.requires_grad) + int(x.requires_grad))

    handles = [m.register_forward_hook(hook) for m in trainer.model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    step0 = trainer.step
    trainer.train_one_epoch()
    steps = trainer.step - step0
    for h in handles:
        h.remove()
    return {"forward_macs": fwd[0] // steps, "backward_macs": bwd[0] // steps}


def step_trainer(args, res: int, freeze_early: bool, precision: str = "auto") -> Trainer:
    """The cpu-fast preset's Trainer fixed at one resolution, its epoch a slice of args.steps batches."""
    cfg = resolve("cpu-fast", None, {"data_dir": args.data_dir, "resolutions": [res], "res_milestones": [],
                                     "val_size": 0, "epochs": 1, "time_budget": 0, "freeze_early_at": 0.0,
                                     "precision": precision})
    trainer = build_trainer(cfg, Path("/nonexistent-unused"), log=lambda *_: None)
    if freeze_early:  # as cpu-fast runs after freeze_early_at
        for p in early_parameters(trainer.model):
            p.requires_grad_(False)
    return slice_epoch(trainer, args.steps)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per timed round")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per setting, after one warm-up round")
    ap.add_argument("--out", default="benchmarks/results/records/roofline-cpu.json")
    args = ap.parse_args()

    # cpu-fast: 16 px first, then 24 px with the early layers frozen; 32 px for the other presets
    settings = [(16, False), (24, False), (24, True), (32, False)]
    rows = []
    for res, frozen in settings:
        trainer = step_trainer(args, res, frozen)
        macs = count_macs(trainer)
        step_s, mm = [], []
        for r in range(args.rounds + 1):
            g = matmul_gflops()
            s = 1 / trainer.train_one_epoch()["images_per_s"] * trainer.cfg.batch_size
            if r:
                step_s.append(s)
                mm.append(g)
        step = statistics.median(step_s)
        flops = 2 * (macs["forward_macs"] + macs["backward_macs"])
        # The machine's speed drifts by tens of percent between rounds and takes the matmul with it,
        # so the fraction is taken round by round (each step round against the matmul just before it).
        fraction = statistics.median(flops / s / 1e9 / g for s, g in zip(step_s, mm, strict=True))
        row = {"res": res, "early_frozen": frozen, "batch_size": trainer.cfg.batch_size, **macs,
               "step_s": step, "images_per_s": trainer.cfg.batch_size / step, "step_gflops": flops / 1e9,
               "achieved_gflops_per_s": flops / step / 1e9, "matmul_gflops_per_s": statistics.median(mm),
               "fraction_of_matmul": fraction, "step_s_rounds": step_s, "matmul_rounds": mm}
        rows.append(row)
        print(f"{res} px{' early frozen' if frozen else ''}: {row['images_per_s']:.1f} img/s, "
              f"{row['step_gflops']:.1f} GFLOP/step, {row['achieved_gflops_per_s']:.1f} GFLOP/s, "
              f"{fraction:.0%} of the matmul rate (median {row['matmul_gflops_per_s']:.1f} GFLOP/s)",
              flush=True)

    result = {"benchmark": "roofline", **provenance(torch.device("cpu")), "threads": torch.get_num_threads(),
              "nominal_peak_gflops_per_s": nominal_peak_gflops(),
              "best_matmul_gflops_per_s": max(g for r in rows for g in r["matmul_rounds"]),
              "steps_per_round": args.steps, "rounds": args.rounds, "settings": rows}
    checkpoint.atomic_write_json(Path(args.out), result)
    print(json.dumps({k: v for k, v in result.items() if k != "settings"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
