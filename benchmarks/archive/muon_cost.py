"""What Muon would cost the cpu-fast step: its orthogonalisation against the step it would join.

Muon (torch.optim.Muon) replaces each weight matrix's update by its orthogonalised momentum, five
Newton-Schulz iterations of matrix products per matrix per step. The CIFAR speedruns that use it run
on GPUs at batches of 1,000-2,000, where that cost is shared by many images; the cpu-fast step has 64
images at 16 or 24 px. Before a run is spent on it, this measures the price: for each regime (16 px;
24 px with the stem and layer1 frozen, as cpu-fast trains after its switch), the real cpu-fast step
(Trainer.run_steps) and torch.optim.Muon's step over matrices of the shapes of every convolution that
trains there, flattened (out, in * k * k) as the speedruns do, in fp32 and in bf16 (the precision the
step runs in), rounds alternating. The figure that decides: Muon's step as a fraction of the training
step it would be added to (the SGD update it replaces is a few element-wise passes).

    PYTHONPATH=benchmarks python benchmarks/archive/muon_cost.py --data-dir data
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from provenance import provenance  # PYTHONPATH=benchmarks: the shared helpers
from roofline import step_trainer
from timing import alternate, median, rate, ratio_median

from c100.device import cpu_has_native_bf16


def muon_over(shapes: list[torch.Size], dtype: torch.dtype) -> torch.optim.Muon:
    """torch.optim.Muon over matrices of these shapes, with a fixed random gradient each."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float32).to(dtype)) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(dtype)
    return torch.optim.Muon(params, lr=0.02, momentum=0.95)


def measure(args, res: int, frozen: bool) -> dict:
    trainer = step_trainer(args, res, frozen)
    convs = [p for p in trainer.model.parameters() if p.requires_grad and p.ndim == 4]
    shapes = [torch.Size((p.shape[0], p.shape[1] * p.shape[2] * p.shape[3])) for p in convs]
    dtypes = {"fp32": torch.float32} | ({"bf16": torch.bfloat16} if cpu_has_native_bf16() else {})
    muons = {name: muon_over(shapes, dt) for name, dt in dtypes.items()}
    trainer.run_steps(args.steps)  # warm-up
    for opt in muons.values():
        opt.step()
    candidates = {"step": lambda: rate(lambda: trainer.run_steps(args.steps), args.steps)}
    for name, opt in muons.items():
        candidates[f"muon_{name}"] = lambda opt=opt: rate(lambda: [opt.step() for _ in range(args.steps)], args.steps)
    rounds = alternate(candidates, args.rounds, warmup=0, unit="steps/s")
    out = {"res": res, "early_frozen": frozen, "batch_size": trainer.cfg.batch_size,
           "precision": trainer.cfg.precision, "matrices": len(shapes),
           "matrix_params": sum(s.numel() for s in shapes), "step_ms": 1000 / median(rounds["step"])}
    for name in muons:
        out[f"muon_{name}_ms"] = 1000 / median(rounds[f"muon_{name}"])
        # per round: Muon's time over the step's time (steps/s inverted), so drift cancels
        out[f"muon_{name}_over_step"] = ratio_median(rounds["step"], rounds[f"muon_{name}"])
    return out | {f"{k}_rounds": v for k, v in rounds.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--steps", type=int, default=10, help="steps per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/sweeps/17-recipe-xeon/muon-cost.json")
    args = ap.parse_args()
    rows = [measure(args, 16, False), measure(args, 24, True)]
    for r in rows:
        print(f"{r['res']} px{' layer1 frozen' if r['early_frozen'] else ''}: step {r['step_ms']:.0f} ms; " +
              ", ".join(f"Muon {k} {r[f'muon_{k}_ms']:.0f} ms = {r[f'muon_{k}_over_step']:.2f}x the step"
                        for k in ("fp32", "bf16") if f"muon_{k}_ms" in r))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "muon_cost", **provenance(torch.device("cpu")), "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
