"""Evaluation speed with and without BatchNorm folded into the convolutions, side by side.

The shipped ResNet18 weights (src/c100/weights) classify the first --images training images through
`Model.logits` (the path of `c100 evaluate` and `c100 predict`) at batch 100, channels_last and
fp32, once as the model is and once after `fold_batchnorm`. Rounds alternate (plain, folded, plain, ...)
so drift of the machine hits both alike; one warm-up round of each is discarded; medians are
reported, with how often the two agree on the top-1 class and their largest logit difference.

    PYTHONPATH=benchmarks python benchmarks/archive/eval_speed.py --data-dir data --images 1000 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from provenance import provenance  # PYTHONPATH=benchmarks: the shared helpers

from c100 import checkpoint, data
from c100.inference import load

WEIGHTS = Path(__file__).resolve().parents[2] / "src" / "c100" / "weights" / "resnet18-default.safetensors"


def timed(model, x, batch) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    logits = model.logits(x, batch_size=batch)
    return len(x) / (time.perf_counter() - t0), logits


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds of each, after one warm-up round")
    ap.add_argument("--out", default="benchmarks/results/records/eval-speed-cpu.json")
    args = ap.parse_args()

    folded = load(WEIGHTS, device="cpu", backend="torch")  # the inference Model: BatchNorm folded, NHWC
    plain = load(WEIGHTS, device="cpu", backend="torch")
    plain.net = plain.module  # the same loop through the unfolded network
    meta = folded.card
    splits, _ = data.load(args.data_dir, False, splits=("train",))
    x = torch.from_numpy(splits["train"].images[:args.images])

    rounds = []
    for i in range(args.rounds + 1):
        p, lp = timed(plain, x, args.batch_size)
        f, lf = timed(folded, x, args.batch_size)
        print(f"round {i}{' (warm-up, discarded)' if i == 0 else ''}: plain {p:.1f} img/s, folded {f:.1f} img/s, "
              f"ratio {f / p:.3f}", flush=True)
        if i:
            rounds.append({"plain": p, "folded": f, "ratio": f / p})
    result = {
        "benchmark": "eval-speed", **provenance(torch.device("cpu")),
        "model": meta["arch"], "weights": str(WEIGHTS.relative_to(WEIGHTS.parents[3])), "images": len(x),
        "batch_size": args.batch_size, "precision": "fp32", "channels_last": True, "rounds": rounds,
        "plain_images_per_s": statistics.median(r["plain"] for r in rounds),
        "folded_images_per_s": statistics.median(r["folded"] for r in rounds),
        "ratio_median": statistics.median(r["ratio"] for r in rounds),
        "top1_agreement": (lp.argmax(1) == lf.argmax(1)).float().mean().item(),
        "max_abs_logit_diff": (lp - lf).abs().max().item(),
    }
    checkpoint.atomic_write_json(Path(args.out), result)
    print(f"median: plain {result['plain_images_per_s']:.1f} img/s, folded {result['folded_images_per_s']:.1f} "
          f"img/s, ratio {result['ratio_median']:.3f}; top-1 agreement {result['top1_agreement']:.4f}, "
          f"max |logit diff| {result['max_abs_logit_diff']:.2e} -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
