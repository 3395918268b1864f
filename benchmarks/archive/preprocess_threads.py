"""Does preprocessing on one torch thread speed up the backends that run on another runtime? The shipped
ResNet18 on every ONNX Runtime and OpenVINO backend this installation runs, images/s at batch 100 through
`Model.logits`, with `c100.inference.one_torch_thread` around each batch's normalise-and-resize (as
shipped) and without it (torch's two threads: libgomp's workers spin after the op, on the cores the
runtime needs next). Rounds alternate between the two; medians are reported. Run `c100 quantize
default` first for the int8 backends.

    PYTHONPATH=benchmarks python benchmarks/archive/preprocess_threads.py --rounds 7
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import numpy as np
import torch
from provenance import provenance  # PYTHONPATH=benchmarks: the shared helpers
from timing import median, rate

import c100.inference as inference
from c100 import UserError, checkpoint
from c100.backends import runnable


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--out", default="benchmarks/results/records/preprocess-threads-cpu.json")
    args = ap.parse_args()
    weights = inference.packaged_weights()
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4 * args.batch, 3, 32, 32), dtype=np.uint8))
    shipped = inference.one_torch_thread
    ways = {"one_thread": shipped, "torch_threads": contextlib.nullcontext}
    rows = {}
    for backend in ("onnx", "int8", "openvino", "openvino-int8"):
        if not runnable(backend):
            continue
        try:
            model = inference.load(weights, device="cpu", backend=backend)
        except UserError as e:  # no int8 file before `c100 quantize default`
            print(f"{backend}: skipped ({e})")
            continue
        model.logits(x[:args.batch])  # warm-up
        speeds = {w: [] for w in ways}
        for _ in range(args.rounds):
            for way, ctx in ways.items():
                inference.one_torch_thread = ctx
                try:
                    speeds[way].append(rate(lambda m=model: m.logits(x, batch_size=args.batch), len(x)))
                finally:
                    inference.one_torch_thread = shipped
        med = {w: round(median(s), 1) for w, s in speeds.items()}
        rows[backend] = {**{w: {"images_per_s": m, "rounds": [round(s, 1) for s in speeds[w]]} for w, m in
                            med.items()}, "ratio": round(med["one_thread"] / med["torch_threads"], 3)}
        print(f"{backend:<14} one torch thread {med['one_thread']:6.1f} img/s, torch's threads "
              f"{med['torch_threads']:6.1f} img/s: x{rows[backend]['ratio']:.3f}", flush=True)
    result = {"benchmark": "preprocess-threads", **provenance(torch.device("cpu")), "batch": args.batch,
              "images": len(x), "rounds": args.rounds, "torch_threads": torch.get_num_threads(), "backends": rows}
    checkpoint.atomic_write_json(Path(args.out), result)
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
