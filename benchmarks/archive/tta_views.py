"""Test-time augmentation beyond flips: does averaging shifted views pay for its time?

A trained run's final model on its validation split (the test set is not read), each image seen as
several views whose probabilities are averaged: the image, its mirror (the flip TTA cpu-fast ships),
and both shifted by one pixel in each direction (reflect padding, as training shifts them). For each
set of views: validation top-1 and the seconds of the pass, in the precision the run validated in
(bf16 where the CPU has it natively, as cpu-fast does). The views are evaluated once each and
combined, so every set is judged on the same logits.

    PYTHONPATH=benchmarks python benchmarks/archive/tta_views.py benchmarks/runs/select17-base-s0 --data-dir data
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from provenance import provenance  # PYTHONPATH=benchmarks: the shared helpers

from c100.device import resolve_precision
from c100.evaluate import eval_config, load_eval_split
from c100.inference import load

SHIFTS = {"0": (0, 0), "right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}
SETS = {  # name -> (shift, mirrored) views
    "1 view": [("0", False)],
    "flip (2 views)": [("0", False), ("0", True)],
    "flip x right/down (6 views)": [(s, f) for s in ("0", "right", "down") for f in (False, True)],
    "flip x 4 shifts (10 views)": [(s, f) for s in SHIFTS for f in (False, True)],
}


def shifted(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """uint8 images moved by (dx, dy) pixels, the edge filled by reflection."""
    if not dx and not dy:
        return x
    p = max(abs(dx), abs(dy))
    padded = F.pad(x.float(), (p, p, p, p), mode="reflect")
    h, w = x.shape[2:]
    return padded[:, :, p - dy:p - dy + h, p - dx:p - dx + w].to(torch.uint8)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a training run folder (its last.pt)")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--out", default="benchmarks/results/sweeps/17-recipe-xeon/tta-views.json")
    args = ap.parse_args()
    probe = load(args.run, "last", "cpu")
    precision = resolve_precision(probe.config.eval_precision, torch.device("cpu"))
    model = load(args.run, "last", "cpu", precision=precision)
    model.tta = False  # views are made here
    images, _ = load_eval_split(eval_config(model, args.data_dir), "val")
    x, y = torch.from_numpy(images.images), torch.from_numpy(images.fine).long()
    logp, secs = {}, {}
    for name, (dx, dy) in SHIFTS.items():
        for flip in (False, True):
            t0 = time.perf_counter()
            logp[name, flip] = model.logits(shifted(x, dx, dy), flip=flip).log_softmax(1)
            secs[name, flip] = time.perf_counter() - t0
    rows = []
    for label, views in SETS.items():
        probs = torch.stack([logp[v].exp() for v in views]).mean(0)
        rows.append({"views": label, "n": len(views), "val_top1": (probs.argmax(1) == y).float().mean().item(),
                     "pass_s": sum(secs[v] for v in views)})
        print(f"{label}: {100 * rows[-1]['val_top1']:.2f}% val, {rows[-1]['pass_s']:.1f} s")
    result = {"benchmark": "tta_views", **provenance(torch.device("cpu")), "run": args.run,
              "precision": precision, "eval_size": model.input_size, "images": len(y), "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
