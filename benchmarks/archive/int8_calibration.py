"""Which int8 settings keep the shipped model's accuracy? Variants of ONNX Runtime's static quantization
(src/c100/quantize.py: QDQ, per-channel int8 weights, uint8 activations), each calibrated on the same
1,000 training images and judged on the validation split against the fp32 model; the test set is not
read. The choice goes into quantize.py; `c100 quantize` then measures the test set once.

    PYTHONPATH=benchmarks python benchmarks/archive/int8_calibration.py --data-dir data
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from provenance import provenance  # PYTHONPATH=benchmarks: the shared helpers

from c100 import checkpoint
from c100.backends import onnx_fp32
from c100.card import sidecar_path
from c100.evaluate import evaluate
from c100.inference import load, packaged_weights
from c100.quantize import VNNI_FLAGS, calibration_batches, calibration_images, edge_nodes, write_int8


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--images", type=int, default=1000, help="calibration images")
    ap.add_argument("--out", default="benchmarks/results/sweeps/13-int8-calibration/int8-calibration.json")
    args = ap.parse_args()
    weights = packaged_weights()
    model = load(weights, device="cpu", backend="torch")
    fp32 = onnx_fp32(weights)
    x = calibration_images(model, args.data_dir, args.images)
    batches = calibration_batches(model, x)
    ref = evaluate(weights, "val", data_dir=args.data_dir, device="cpu")["top1"]
    print(f"fp32 (torch): val top-1 {ref:.2%}", flush=True)
    edges = edge_nodes(fp32)
    variants = [
        ("minmax, 7-bit weights (reduce_range)", {"reduce_range": True, "method": "minmax"}),
        ("minmax, 8-bit weights", {"reduce_range": False, "method": "minmax"}),
        ("percentile, 7-bit weights", {"reduce_range": True, "method": "percentile"}),
        ("entropy, 7-bit weights", {"reduce_range": True, "method": "entropy"}),
        ("minmax, 7-bit weights, stem and classifier in fp32", {"reduce_range": True, "method": "minmax",
                                                                "exclude": edges}),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in variants:
            out = Path(tmp) / f"v{len(rows)}-int8.onnx"
            t0 = time.perf_counter()
            write_int8(fp32, out, batches, **kw)
            seconds = time.perf_counter() - t0
            sidecar_path(out).write_text(sidecar_path(fp32).read_text())
            top1 = evaluate(out, "val", data_dir=args.data_dir, device="cpu")["top1"]
            rows.append({"variant": name, **{k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()},
                         "val_top1": top1, "delta_points": round(100 * (top1 - ref), 2),
                         "quantize_s": round(seconds, 1)})
            print(f"{name}: val top-1 {top1:.2%} ({100 * (top1 - ref):+.2f} points), {seconds:.0f} s", flush=True)
    result = {"benchmark": "int8-calibration", **provenance(torch.device("cpu")), "weights": weights.name,
              "cpu_int8_flags": sorted(checkpoint.cpu_flags() & (VNNI_FLAGS | {"avx2"})),
              "calibration_images": len(x), "fp32_val_top1": ref, "rows": rows}
    checkpoint.atomic_write_json(Path(args.out), result)
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
