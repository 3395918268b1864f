"""The work behind one classification: the multiply-adds of a forward pass per image, counted by hooks on
every convolution and linear layer (BatchNorm, ReLU, additions and pooling are not counted: a few
percent), for the shipped network at its 24 px input and at 32 px, and for the homework's Keras
ResNet18 (its faithful port, resnet18-seed) at its 32 px input.

The speed records compare images per second on the same 32 x 32 images, which is what a user gets; the
ratio per multiply-add says how much of it is faster execution and how much less work (the 24 px input
of the shipped model does 0.60x the multiply-adds of the homework's network at 32 px).

    python benchmarks/macs.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn as nn
from provenance import provenance  # benchmarks/ is on sys.path when a script there runs

from c100 import checkpoint
from c100.models import create_model

NETWORKS = [("resnet18", 24, "the shipped model (ResNet18, CIFAR stem) at its 24 px input"),
            ("resnet18", 32, "the same network at 32 px"),
            ("resnet18-seed", 32, "the homework's Keras ResNet18 (its PyTorch port) at its 32 px input")]


def forward_macs(model: nn.Module, size: int) -> int:
    """Multiply-adds of one forward pass of one size x size image through convolutions and linear layers."""
    total = [0]

    def hook(m: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        per_out = m.weight[0].numel() if isinstance(m, nn.Conv2d) else m.in_features  # MACs per output value
        total[0] += out.numel() * per_out

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    for h in handles:
        h.remove()
    return total[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results/records/inference-macs.json")
    args = ap.parse_args()
    rows = []
    for arch, size, what in NETWORKS:
        macs = forward_macs(create_model(arch), size)
        rows.append({"arch": arch, "input_px": size, "macs": macs, "what": what})
        print(f"{arch:<14} {size} px  {macs / 1e9:.4f} GMAC per image  ({what})")
    ours, keras = rows[0]["macs"], rows[2]["macs"]
    result = {"benchmark": "inference-macs", **provenance(torch.device("cpu")), "rows": rows,
              "ours_over_keras": round(ours / keras, 4)}
    print(f"the shipped model does {ours / keras:.3f}x the homework network's multiply-adds per image")
    checkpoint.atomic_write_json(Path(args.out), result)
    print(json.dumps({"out": args.out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
