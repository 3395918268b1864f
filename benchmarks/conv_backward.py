"""Where a ResNet18 training step spends its time on this CPU, and what the 3x3 convolutions cost in
each direction. Two parts, both on random tensors (only shapes matter for speed):

1. the whole step (forward, backward, SGD) under torch.profiler at each resolution: the share of
   self CPU time in convolution backward, convolution forward, BatchNorm and everything else;
2. every stage's 3x3 stride-1 convolution alone (batch, channels, pixels as in ResNet18 at that
   resolution, channels_last like the cpu-fast preset): forward, the input gradient and the weight
   gradient as oneDNN computes them (aten.convolution_backward), and the weight gradient as one GEMM
   over unfolded patches (models/cpu_conv.weight_grad_gemm, what the trainer's CPU step runs). Rounds
   alternate between the four; medians are reported, with the GEMM result's largest error against oneDNN;
3. whole training steps of two copies of ResNet18, one with every convolution gradient by oneDNN,
   one under gemm_weight_grad() (models/cpu_conv.py: the GEMM weight gradient on maps of at most 16
   pixels), alternating, same inputs: images per second and the ratio, medians of the rounds.

    python benchmarks/conv_backward.py --res 16 32 --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from provenance import provenance  # benchmarks/ is on sys.path when a script there runs
from torch.profiler import ProfilerActivity, profile

from c100 import checkpoint
from c100.models import create_model
from c100.models.cpu_conv import gemm_weight_grad, weight_grad_gemm

NHWC = torch.channels_last


def sgd_step(model: nn.Module, res: int, batch: int, gemm: bool = False):
    """A closure running one training step (forward, backward, SGD) of `model` on fixed random data; with
    `gemm`, inside gemm_weight_grad() as the trainer's CPU step runs."""
    x = torch.randn(batch, 3, res, res).contiguous(memory_format=NHWC)
    y = torch.randint(0, 100, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def step():
        with gemm_weight_grad(gemm):
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()

    return step


def step_shares(res: int, batch: int, steps: int) -> dict:
    """Self CPU time of one training step by kind of operator, as fractions, and the step's seconds."""
    model = create_model("resnet18").to(memory_format=NHWC)  # every gradient by oneDNN
    step = sgd_step(model, res, batch)
    step(), step()  # oneDNN picks and caches its kernels on the first calls
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    kinds = {"conv_backward": ("aten::convolution_backward",), "conv_forward": ("aten::mkldnn_convolution",),
             "batch_norm": ("aten::native_batch_norm", "aten::native_batch_norm_backward")}
    self_us = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    total = sum(self_us.values())
    shares = {k: sum(self_us.get(n, 0) for n in names) / total for k, names in kinds.items()}
    shares["other"] = 1 - sum(shares.values())
    return {"res": res, "step_s": total / 1e6 / steps, **{k: round(v, 4) for k, v in shares.items()}}


def step_speedup(res: int, batch: int, rounds: int) -> dict:
    onednn = create_model("resnet18").to(memory_format=NHWC)
    gemm = copy.deepcopy(onednn)
    steps = {}
    for name, model in (("onednn", onednn), ("gemm", gemm)):
        torch.manual_seed(res)  # the same images and labels for both
        steps[name] = sgd_step(model, res, batch, gemm=name == "gemm")
    times = {k: [] for k in steps}
    for step in steps.values():
        step(), step()
    for _ in range(rounds):
        for k, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[k].append(time.perf_counter() - t0)
    ratio = statistics.median(a / b for a, b in zip(times["onednn"], times["gemm"], strict=True))
    return {"res": res, **{f"{k}_images_per_s": round(batch / statistics.median(v), 1) for k, v in times.items()},
            "speedup_median": round(ratio, 3)}


def conv_costs(channels: int, px: int, batch: int, rounds: int) -> dict:
    x = torch.randn(batch, channels, px, px).contiguous(memory_format=NHWC)
    w = torch.randn(channels, channels, 3, 3)
    g = torch.randn(batch, channels, px, px).contiguous(memory_format=NHWC)

    def backward(mask):
        return torch.ops.aten.convolution_backward(g, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)

    ways = {"forward_ms": lambda: F.conv2d(x, w, padding=1),
            "input_grad_ms": lambda: backward([True, False, False]),
            "weight_grad_ms": lambda: backward([False, True, False]),
            "weight_grad_gemm_ms": lambda: weight_grad_gemm(x, g, w.shape, (1, 1), (1, 1))}
    times = {k: [] for k in ways}
    for fn in ways.values():
        fn()
    for _ in range(rounds):
        for k, fn in ways.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(1000 * (time.perf_counter() - t0))
    ref = backward([False, True, False])[1]
    err = ((weight_grad_gemm(x, g, w.shape, (1, 1), (1, 1)) - ref).abs().max() / ref.abs().max()).item()
    return {"channels": channels, "px": px, **{k: round(statistics.median(v), 2) for k, v in times.items()},
            "gemm_max_rel_err": err}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--res", type=int, nargs="+", default=[16, 32], help="training resolutions in pixels")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3, help="profiled training steps per resolution")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per convolution")
    ap.add_argument("--out", default="benchmarks/results/records/conv-backward-cpu.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    steps, convs, speedups = [], [], []
    for res in args.res:
        speedups.append(step_speedup(res, args.batch_size, args.rounds))
        print(json.dumps(speedups[-1]), flush=True)
        steps.append(step_shares(res, args.batch_size, args.steps))
        print(json.dumps(steps[-1]), flush=True)
        for stage, channels in enumerate((64, 128, 256, 512)):
            convs.append({"res": res, **conv_costs(channels, res >> stage, args.batch_size, args.rounds)})
            print(json.dumps(convs[-1]), flush=True)
    result = {"benchmark": "conv-backward", **provenance(torch.device("cpu")), "model": "resnet18",
              "batch_size": args.batch_size, "precision": "fp32", "memory_format": "channels_last",
              "rounds": args.rounds, "steps": steps, "convs": convs,
              "step_speedup": speedups}
    checkpoint.atomic_write_json(Path(args.out), result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
