"""The CPU training step against its limits: this CPU's matmul rate, oneDNN alone, and Keras.

1. For each precision (fp32; bf16 too where the CPU has native bf16) and each cpu-fast regime (16 px,
   24 px, 24 px with layer1 frozen, 32 px; batch 64, stem frozen), the trainer's real step three ways,
   round by round: as the trainer runs it (convolutions on maps of at most 16 pixels as GEMMs,
   models/cpu_conv.py; SGD fused, fused_sgd.py), with every convolution by oneDNN (what the bf16 step
   ran before 2026-12-04), and with torch's default SGD (before 2026-12-05). The multiply-adds of every
   convolution and linear layer (forward, and the backward the step runs) are counted by hooks and set
   against the matrix-multiply rate of the same precision (a large torch.mm, oneDNN/MKL's best case)
   measured just before each round: if the step ran near that rate, faster kernels could not buy more
   epochs. BatchNorm, ReLU, additions and the optimizer are not counted, so the achieved rate is a
   lower bound. One profiled round tells where the step's time goes by kind of operator.
2. With --keras: the homework's network (resnet18-seed, 32 px, batch 64) trained by our trainer in fp32
   and, where native, bf16, against the homework's Keras ResNet18 with `train_on_batch` in fp32
   (TensorFlow in the benchmark-only .venv-keras: bash benchmarks/keras/setup.sh), rounds alternating.
Medians of the rounds are reported; the machine's drift hits every variant alike.

    python benchmarks/roofline.py --data-dir data --keras
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import torch
import torch.nn as nn
from provenance import provenance  # benchmarks/ is on sys.path when a script there runs
from throughput import benchmark_trainer
from timing import alternate, median, rate, ratio_median
from torch.profiler import ProfilerActivity, profile

from c100 import checkpoint
from c100.config import resolve
from c100.device import cpu_has_native_bf16
from c100.models.resnet import early_parameters
from c100.train import Trainer, build_trainer

ROOT = Path(__file__).resolve().parent.parent
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# self CPU time by kind of operator; the rest is "other" (ReLU, additions, the optimizer's arithmetic, ...)
KINDS = {"GEMM convolutions": ("aten::mm", "aten::addmm"),
         "oneDNN convolutions": ("aten::mkldnn_convolution", "aten::convolution_backward"),
         "BatchNorm": ("aten::native_batch_norm", "aten::native_batch_norm_backward"),
         "copies and casts": ("aten::copy_", "aten::cat", "aten::stack", "aten::fill_", "aten::zero_")}


def matmul_gflops(dtype: torch.dtype = torch.float32, n: int = 4096, reps: int = 2) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    return rate(lambda: [a @ b for _ in range(reps)], 2 * n**3 * reps) / 1e9


def count_macs(trainer: Trainer, steps: int) -> dict:
    """Multiply-adds of one training step (one batch), forward and backward, counted by hooks over `steps`."""
    fwd, bwd = [0], [0]

    def hook(m: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        x = inputs[0]
        per_out = m.weight[0].numel() if isinstance(m, nn.Conv2d) else m.in_features  # MACs per output value
        macs = out.numel() * per_out
        fwd[0] += macs
        bwd[0] += macs * (int(m.weight.requires_grad) + int(x.requires_grad))

    handles = [m.register_forward_hook(hook) for m in trainer.model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    trainer.run_steps(steps)
    for h in handles:
        h.remove()
    return {"forward_macs": fwd[0] // steps, "backward_macs": bwd[0] // steps}


def step_trainer(args, res: int, freeze_early: bool, precision: str = "auto") -> Trainer:
    """The cpu-fast preset's Trainer fixed at one resolution, timed over args.steps steps (run_steps)."""
    cfg = resolve("cpu-fast", None, {"data_dir": args.data_dir, "resolutions": [res], "res_milestones": [],
                                     "val_size": 0, "epochs": 1, "time_budget": 0, "freeze_early_at": 0.0,
                                     "precision": precision})
    trainer = build_trainer(cfg, Path("/nonexistent-unused"), log=lambda *_: None)
    if freeze_early:  # as cpu-fast runs after freeze_early_at
        for p in early_parameters(trainer.model):
            p.requires_grad_(False)
    return trainer


def time_shares(trainer: Trainer, steps: int) -> dict:
    """Where one round of the step spends its time: self CPU time by kind of operator, as fractions."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.run_steps(steps)
    events = prof.key_averages()
    self_us = {e.key: e.self_cpu_time_total for e in events}
    total = sum(self_us.values())
    shares = {k: sum(self_us.get(n, 0) for n in names) / total for k, names in KINDS.items()}
    shares["other"] = 1 - sum(shares.values())
    optimizer = sum(e.cpu_time_total for e in events if e.key.startswith("Optimizer.step"))
    return {**{k: round(v, 3) for k, v in shares.items()},
            "optimizer step (all its operators)": round(optimizer / total, 3)}


def with_default_sgd(trainer: Trainer) -> Trainer:
    """The trainer with torch's default SGD (a pass over the weights per arithmetic op; what the trainer ran
    before 2026-12-05) in place of FusedSGD, same groups and settings."""
    opt = trainer.optimizer
    keep = ("lr", "momentum", "nesterov", "weight_decay")
    trainer.optimizer = torch.optim.SGD([{k: g[k] for k in ("params", *keep)} for g in opt.param_groups])
    return trainer


def measure_step(args, precision: str, res: int, frozen: bool) -> dict:
    ours, onednn = step_trainer(args, res, frozen, precision), step_trainer(args, res, frozen, precision)
    onednn.gemm_convs = False  # every convolution by oneDNN
    default_sgd = with_default_sgd(step_trainer(args, res, frozen, precision))
    macs = count_macs(ours, args.steps)  # one round of ours: its warm-up
    onednn.run_steps(args.steps)  # and the others'
    default_sgd.run_steps(args.steps)
    rounds = alternate({"matmul": lambda: matmul_gflops(DTYPES[precision]),  # just before the step it is set against
                        "ours": lambda: ours.run_steps(args.steps)["images_per_s"],
                        "onednn": lambda: onednn.run_steps(args.steps)["images_per_s"],
                        "default_sgd": lambda: default_sgd.run_steps(args.steps)["images_per_s"]},
                       args.rounds, warmup=0, log=None)
    batch = ours.cfg.batch_size
    flops = 2 * (macs["forward_macs"] + macs["backward_macs"])
    # the machine's speed drifts between rounds and takes the matmul with it: the fraction is taken round
    # by round, each step round against the matmul just before it
    pairs = zip(rounds["ours"], rounds["matmul"], strict=True)
    fraction = median(flops * ips / batch / 1e9 / g for ips, g in pairs)
    ips = median(rounds["ours"])
    speedup = ratio_median(rounds["ours"], rounds["onednn"])
    return {"precision": precision, "res": res, "early_frozen": frozen, "batch_size": batch, **macs,
            "step_gflops": flops / 1e9, "images_per_s": ips, "onednn_images_per_s": median(rounds["onednn"]),
            "speedup_over_onednn": speedup, "default_sgd_images_per_s": median(rounds["default_sgd"]),
            "speedup_over_default_sgd": ratio_median(rounds["ours"], rounds["default_sgd"]),
            "achieved_gflops_per_s": flops * ips / batch / 1e9,
            "matmul_gflops_per_s": median(rounds["matmul"]),
            "fraction_of_matmul": fraction, "time_shares": time_shares(ours, args.steps),
            **{f"{k}_rounds": v for k, v in rounds.items()}}


def keras_train_round(python: str, steps: int) -> dict:
    out = subprocess.run([python, str(ROOT / "benchmarks" / "keras" / "resnet18_keras.py"), "--measure", "train",
                          "--rounds", "1", "--train-steps", str(steps)],
                         capture_output=True, text=True, timeout=900, check=True)
    return json.loads(out.stdout)


def measure_against_keras(args, precisions: list[str]) -> dict:
    """The homework's network at 32 px and batch 64: our trainer (as it runs, and with every convolution by
    oneDNN) against Keras' train_on_batch."""
    ns = argparse.Namespace(model="resnet18-seed", batch_size=64, data_dir=args.data_dir, device="cpu",
                            steps=args.keras_steps)
    ours = {}
    for p in precisions:
        for variant in ("", "_onednn"):
            ours[p + variant] = benchmark_trainer(argparse.Namespace(**vars(ns), precision=p), resolutions=[32])
            ours[p + variant].gemm_convs = not variant
    for t in ours.values():
        t.run_steps(args.keras_steps)  # warm-up
    keras_runs = []  # each round's whole answer from the Keras process

    def keras() -> float:
        keras_runs.append(keras_train_round(args.keras_python, args.keras_steps))
        return keras_runs[-1]["train"]["median_images_per_s"]

    steps = {k: (lambda t=t: t.run_steps(args.keras_steps)["images_per_s"]) for k, t in ours.items()}
    rounds = alternate({**steps, "keras": keras}, args.keras_rounds, warmup=0,
                       log=lambda line: print(f"keras {line}", flush=True))
    rounds["keras_other_work"] = [out["train"]["cpu_share"]["other_work"] for out in keras_runs]
    out = keras_runs[-1]
    return {"what": "resnet18-seed (the homework's network) at batch 64, 32 px: our trainer (seeded batches, "
                    "augmentation; as it runs, and with every convolution by oneDNN) against Keras train_on_batch "
                    "(fp32, TensorFlow on the CPU)",
            "tensorflow": out["tensorflow"], "keras_images_per_s": median(rounds["keras"]),
            **{f"ours_{k}_images_per_s": median(rounds[k]) for k in ours},
            **{f"ratio_{k}": ratio_median(rounds[k], rounds["keras"]) for k in ours},
            "rounds": rounds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per timed round")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per setting, after one warm-up round")
    ap.add_argument("--precisions", nargs="+", choices=list(DTYPES), default=None,
                    help="default: fp32, and bf16 where the CPU has native bf16")
    ap.add_argument("--keras", action="store_true",
                    help="also the homework's network against Keras (needs .venv-keras)")
    ap.add_argument("--keras-rounds", type=int, default=5)
    ap.add_argument("--keras-steps", type=int, default=20, help="steps of batch 64 per round, ours and Keras'")
    ap.add_argument("--keras-python", default=str(ROOT / ".venv-keras" / "bin" / "python"))
    ap.add_argument("--out", default="benchmarks/results/records/roofline-cpu.json",
                    help="result JSON (name it after the CPU: roofline-cpu-<cpu>.json)")
    args = ap.parse_args()
    precisions = args.precisions or (["fp32", "bf16"] if cpu_has_native_bf16() else ["fp32"])

    # cpu-fast: 16 px first, then 24 px with the early layers frozen; 32 px for the other presets
    rows = []
    for precision in precisions:
        for res, frozen in [(16, False), (24, False), (24, True), (32, False)]:
            row = measure_step(args, precision, res, frozen)
            rows.append(row)
            print(f"{precision} {res} px{' early frozen' if frozen else ''}: {row['images_per_s']:.1f} img/s "
                  f"({row['speedup_over_onednn']:.2f}x oneDNN alone, "
                  f"{row['speedup_over_default_sgd']:.2f}x default SGD), "
                  f"{row['achieved_gflops_per_s']:.1f} GFLOP/s, "
                  f"{row['fraction_of_matmul']:.0%} of the matmul rate ({row['matmul_gflops_per_s']:.0f} GFLOP/s); "
                  f"time: {row['time_shares']}", flush=True)
    result = {"benchmark": "roofline", **provenance(torch.device("cpu")), "threads": torch.get_num_threads(),
              "best_matmul_gflops_per_s": {p: max(g for r in rows if r["precision"] == p for g in r["matmul_rounds"])
                                           for p in precisions},
              "steps_per_round": args.steps, "rounds": args.rounds, "settings": rows}
    if args.keras:
        result["keras"] = measure_against_keras(args, precisions)
    checkpoint.atomic_write_json(Path(args.out), result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("settings", "keras")}, indent=2))
    if args.keras:
        print(json.dumps({k: v for k, v in result["keras"].items() if k != "rounds"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
