"""DDP step speed with the small-map GEMM convolutions' weight gradient in the weight's own strides (after
issue 39) or contiguous (before: DDP warned "Grad strides do not match bucket view strides" and copied the
1x1 shortcut gradients), alternating blocks of steps in one torchrun run so that both see the same machine load.

The step is c100's CPU step: ResNet18 channels-last at 16 px (GEMM convolutions on the 4x4 and 2x2
maps), global batch 32 over the processes, gloo, SGD. Prints the median img/s of each and the median of
the per-round ratios.

    OMP_NUM_THREADS=1 PYTHONPATH=benchmarks torchrun --standalone --nproc-per-node 2 \\
        benchmarks/archive/ddp_grad_layout.py --steps 4 --rounds 20
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import c100.models.cpu_conv as cpu_conv
from c100.models import create_model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=4, help="steps per timed block")
    ap.add_argument("--rounds", type=int, default=20, help="rounds of one block each way")
    args = ap.parse_args()
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = create_model("resnet18").to(memory_format=torch.channels_last)
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    per = 32 // dist.get_world_size()
    x = torch.randn(per, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (per,))
    ways = {"after": cpu_conv.in_layout_of, "before": lambda weight, grad: grad}

    def step() -> None:
        with cpu_conv.small_map_gemm(True):
            loss = F.cross_entropy(ddp(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()

    for _ in range(3):
        step()
    speed = {"before": [], "after": []}
    for r in range(args.rounds):
        for name in ("before", "after") if r % 2 == 0 else ("after", "before"):
            cpu_conv.in_layout_of = ways[name]
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            dist.barrier()
            speed[name].append(args.steps * 32 / (time.perf_counter() - t0))
    if dist.get_rank() == 0:
        ratios = [a / b for a, b in zip(speed["after"], speed["before"], strict=True)]
        print(", ".join(f"{k} {statistics.median(v):.1f} img/s" for k, v in speed.items())
              + f"; median ratio after/before {statistics.median(ratios):.3f} over {args.rounds} rounds")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
