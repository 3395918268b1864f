"""Validation accuracy of trained runs when their input is resized before the network, side by side.

A run trained with progressive resizing that stops at 24 px sees 32 px images only at evaluation;
this measures, on the run's own validation split (never the test set), whether its final model does
better on the 32 px images as they are or downsampled to the last training resolution (the same
bilinear, antialiased resize as training). It also times each pass: a 24 px pass costs about half
of a 32 px one. Its answer for the select8 proxies made `--eval-resolution` (by default the last
training resolution) part of the trainer, `evaluate`, `predict` and exports.

    PYTHONPATH=benchmarks python benchmarks/archive/eval_resolution.py benchmarks/runs/select8-res16-24-s0 \\
        --sizes 32 24 --data-dir data
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from provenance import provenance  # PYTHONPATH=benchmarks: the shared helpers

from c100 import checkpoint
from c100.evaluate import load_eval_split, metrics
from c100.inference import load


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders (their last.pt is measured)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 24])
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--out", help="JSON file for the results")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    for run in args.runs:
        model = load(run, device="cpu", backend="torch")
        steps = checkpoint.load(Path(run) / "last.pt")["scheduler"]["step"]
        cfg = model.config
        cfg.data_dir = args.data_dir
        split, meta = load_eval_split(cfg, "val")
        images = torch.from_numpy(split.images)
        for size in args.sizes:
            t0 = time.perf_counter()
            model.input_size = size  # the images resized to `size` whatever the run's last resolution was
            logits = model.logits(images, batch_size=100)
            m = metrics(logits, split.fine, meta.fine_to_coarse)
            seconds = time.perf_counter() - t0
            rows.append({"run": run, "resolutions": cfg.resolutions, "steps": steps,
                         "eval_size": size, "val_top1": round(m["top1"], 4), "val_loss": round(m["loss"], 4),
                         "eval_s": round(seconds, 1)})
            print(json.dumps(rows[-1]), flush=True)
    if args.out:
        out = {"benchmark": "eval-resolution", **provenance(torch.device("cpu")), "rows": rows}
        checkpoint.atomic_write_json(args.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
