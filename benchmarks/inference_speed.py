"""Inference on this CPU, side by side in one run: every backend of the shipped ResNet18 (images/s at
batch 100, latency at batch 1: median and p99, through `c100.load(..., backend=...)`), against the
homework's Keras ResNet18 (random weights, TensorFlow CPU in the benchmark-only .venv-keras made by
benchmarks/keras/setup.sh), for inference and for training (our `seed` preset's trainer, the same
network and batch 64 at 32 px, in fp32 and, on CPUs with native bf16, also in bf16, against Keras'
train_on_batch in fp32). Rounds alternate between all of them;
medians are reported. Test top-1 per backend comes from `c100 quantize default` (run it first; it
measures the test set once per backend on this CPU).

    bash benchmarks/keras/setup.sh && c100 quantize default --data-dir data
    python benchmarks/inference_speed.py --data-dir data --rounds 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np
import torch
from provenance import provenance  # benchmarks/ is on sys.path when a script there runs
from throughput import benchmark_trainer
from timing import latency_ms, median, rate

import c100
from c100 import checkpoint
from c100.backends import BACKENDS, cached, runnable
from c100.device import cpu_has_native_bf16

ROOT = Path(__file__).resolve().parent.parent


def throughput(model, x: torch.Tensor, batch: int) -> float:
    return rate(lambda: model.logits(x, batch_size=batch), len(x))


def latency(model, x: torch.Tensor, calls: int) -> dict:
    return latency_ms(lambda i: model.logits(x[i % len(x)][None]), calls)


def keras_round(python: str) -> dict:
    out = subprocess.run([python, str(ROOT / "benchmarks" / "keras" / "resnet18_keras.py"), "--measure", "all",
                          "--rounds", "1"], capture_output=True, text=True, timeout=900, check=True)
    return json.loads(out.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--images", type=int, default=1000, help="images per throughput round (batch 100)")
    ap.add_argument("--latency-calls", type=int, default=200)
    ap.add_argument("--train-steps", type=int, default=20, help="our trainer's steps per round (Keras: 20)")
    ap.add_argument("--keras-python", default=str(ROOT / ".venv-keras" / "bin" / "python"))
    ap.add_argument("--out", default="benchmarks/results/records/inference-speed-cpu.json")
    args = ap.parse_args()

    weights = c100.inference.packaged_weights()
    measured = json.loads(cached(weights, "backends").read_text())  # from `c100 quantize default`
    names = [n for n in BACKENDS if runnable(n)]
    models = {n: c100.load("default", device="cpu", backend=n) for n in names}
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (args.images, 3, 32, 32), dtype=np.uint8))
    # ours in fp32 (Keras' precision) and, where the CPU has native bf16, in bf16: what `--precision auto`
    # trains in there
    precisions = ["fp32", "bf16"] if cpu_has_native_bf16() else ["fp32"]
    trainers = {p: benchmark_trainer(argparse.Namespace(model="resnet18-seed", batch_size=64, data_dir=args.data_dir,
                                                        precision=p, device="cpu", steps=args.train_steps),
                                     resolutions=[32]) for p in precisions}
    for m in models.values():  # warm-up, not timed
        m.logits(x[:200])
    for trainer in trainers.values():
        trainer.run_steps(args.train_steps)
    rounds = []
    for r in range(args.rounds):
        row = {}
        for n, m in models.items():
            row[n] = {"images_per_s": throughput(m, x, 100), **latency(m, x, args.latency_calls)}
        row["ours_train_images_per_s"] = trainers["fp32"].run_steps(args.train_steps)["images_per_s"]
        if "bf16" in trainers:
            row["ours_train_bf16_images_per_s"] = trainers["bf16"].run_steps(args.train_steps)["images_per_s"]
        k = keras_round(args.keras_python)
        row["keras"] = {"images_per_s": k["inference"]["median_images_per_s"],
                        "median_ms": k["latency"]["median_of_medians_ms"], "p99_ms": k["latency"]["median_of_p99_ms"],
                        "train_images_per_s": k["train"]["median_images_per_s"]}
        rounds.append(row)
        print(f"round {r}: " + ", ".join(f"{n} {row[n]['images_per_s']:.0f} img/s" for n in [*names, "keras"]) +
              f"; training: ours {row['ours_train_images_per_s']:.1f}"
              + (f" (bf16 {row['ours_train_bf16_images_per_s']:.1f})" if "bf16" in trainers else "")
              + f", keras {row['keras']['train_images_per_s']:.1f} img/s", flush=True)

    def med(path):
        values = [r for r in rounds]
        for key in path:
            values = [v[key] for v in values]
        return round(median(values), 2)

    keras = {"images_per_s": med(["keras", "images_per_s"]), "median_ms": med(["keras", "median_ms"]),
             "p99_ms": med(["keras", "p99_ms"]), "train_images_per_s": med(["keras", "train_images_per_s"]),
             "tensorflow": k["tensorflow"], "parameters": k["parameters"]}
    backends = {}
    for n in names:
        ips = med([n, "images_per_s"])
        backends[n] = {"images_per_s": ips, "median_ms": med([n, "median_ms"]), "p99_ms": med([n, "p99_ms"]),
                       "x_keras": round(ips / keras["images_per_s"], 2),
                       "test_top1": measured["backends"].get(n, {}).get("test", {}).get("top1")}
    bf16 = med(["ours_train_bf16_images_per_s"]) if "bf16" in trainers else None
    result = {"benchmark": "inference-speed", **provenance(torch.device("cpu")), "model": "resnet18 (shipped)",
              "batch": 100, "rounds": rounds, "backends": backends, "keras": keras,
              "training": {"ours_images_per_s": med(["ours_train_images_per_s"]),
                           "keras_images_per_s": keras["train_images_per_s"],
                           "ratio": round(med(["ours_train_images_per_s"]) / keras["train_images_per_s"], 2),
                           **({"ours_bf16_images_per_s": bf16,
                               "ratio_bf16": round(bf16 / keras["train_images_per_s"], 2)} if bf16 else {}),
                           "what": "resnet18-seed (the homework's network) at batch 64, 32 px, our trainer (seeded "
                                   "batches, augmentation) in fp32 (and bf16 autocast where the CPU has native bf16) "
                                   "against Keras train_on_batch (fp32)"},
              "auto": measured["auto"], "accuracy_measured_on": measured["cpu"]}
    checkpoint.atomic_write_json(Path(args.out), result)
    for n, b in backends.items():
        top1 = f"{b['test_top1']:.2%}" if b["test_top1"] is not None else "-"
        print(f"{n:<13} {b['images_per_s']:7.1f} img/s ({b['x_keras']:.2f}x Keras)  batch 1: {b['median_ms']:.1f} ms "
              f"median, {b['p99_ms']:.1f} ms p99  test top-1 {top1}")
    print(f"keras         {keras['images_per_s']:7.1f} img/s  batch 1: {keras['median_ms']:.1f} ms median, "
          f"{keras['p99_ms']:.1f} ms p99; training {keras['train_images_per_s']:.1f} img/s against ours "
          f"{result['training']['ours_images_per_s']:.1f}"
          + (f" (bf16: {result['training']['ours_bf16_images_per_s']:.1f})" if "bf16" in trainers else "")
          + f" -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
