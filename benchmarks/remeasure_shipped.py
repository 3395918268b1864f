"""The shipped weights, re-measured: test top-1 of src/c100/weights/resnet18-default.safetensors through
each inference path, the reference torch fp32 one (BatchNorm folded) and ONNX Runtime (exported now into
a temporary folder, never committed), with flip TTA. The first thing to run after any change to the
inference path: the figure must stay the one the weights shipped with.

    python benchmarks/remeasure_shipped.py --data-dir data
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
from pathlib import Path

import torch
from provenance import provenance  # benchmarks/ is on sys.path when a script there runs

from c100 import checkpoint
from c100.card import load_sidecar
from c100.evaluate import evaluate
from c100.export import export
from c100.inference import packaged_weights


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--out", default="benchmarks/results/records/shipped-weights.json")
    args = ap.parse_args()
    weights = packaged_weights()
    card = load_sidecar(weights)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx, _ = export("default", "onnx", out=Path(tmp) / "resnet18-default.onnx")
        for backend, source in (("torch fp32", "default"), ("onnxruntime fp32", onnx)):
            r = evaluate(source, "test", report_tta=True, data_dir=args.data_dir, device="cpu")
            rows.append({"backend": backend, "top1": r["top1"], "top5": r["top5"], "superclass": r["superclass"],
                         "tta_top1": r["tta_flip"]["top1"], "eval_s": r["eval_s"], "n": r["n"]})
            print(f"{backend}: top-1 {r['top1']:.2%}, with flip TTA {r['tta_flip']['top1']:.2%} "
                  f"({r['n']} test images, {r['eval_s']:.0f} s)", flush=True)
    trained = card["trained"]
    result = {
        "benchmark": "shipped-weights", **provenance(torch.device("cpu")),
        "weights": str(weights.relative_to(weights.parents[3])),
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(), "dtype": card.get("dtype"),
        "arch": card["arch"], "input_size": card["input"]["shape"][-1],
        # the last training only: a fine-tune (init_from) started from a model trained before it
        "trained": {"seed": trained["config"]["seed"], "init_from": trained["config"].get("init_from") or None,
                    "precision": trained["config"]["precision"], "time_budget": trained["config"]["time_budget"],
                    "device": (trained.get("environment") or {}).get("device_name")},
        "recorded_at_export": card.get("accuracy", {}).get("test"),
        "rows": rows, "test_top1": rows[0]["top1"],
    }
    checkpoint.atomic_write_json(Path(args.out), result)
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
