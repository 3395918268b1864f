"""Training throughput of the c100 trainer vs a bare PyTorch loop, side by side in one process.

Both train the same model (ResNet18 by default) at the same batch size, precision and memory layout
on the same device. The trainer runs its real steps (`Trainer.run_steps`: seeded order, on-device
augmentation, lr schedule, metrics) on the first batches of an epoch of the real training split; the bare
loop runs forward / cross-entropy / backward / SGD step over the same batches, augmented and normalised
beforehand.
Rounds alternate (trainer, bare, trainer, bare, ...) so drift of the machine hits both alike; one
warm-up round of each is discarded; medians are reported.

    python benchmarks/throughput.py --data-dir data --steps 8 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from itertools import islice
from pathlib import Path

import torch
import torch.nn.functional as F
from provenance import provenance  # benchmarks/ is on sys.path when a script there runs

from c100 import checkpoint
from c100.config import resolve
from c100.device import autocast
from c100.models import create_model
from c100.models.cpu_conv import small_map_gemm
from c100.train import Trainer, build_trainer


def bare_round(model, opt, x, y, batch, precision, device, channels_last) -> float:
    model.train()
    t0 = time.perf_counter()
    for i in range(0, len(y) - batch + 1, batch):
        xb = x[i:i + batch]
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with autocast(precision, device):
            loss = F.cross_entropy(model(xb), y[i:i + batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    loss.item()  # wait for the device
    return (len(y) // batch * batch) / (time.perf_counter() - t0)


def benchmark_trainer(args, **flags) -> Trainer:
    """A real Trainer over the whole training split (no validation split), whose rounds are
    `trainer.run_steps(args.steps)`."""
    cfg = resolve("default", None, {"model": args.model, "batch_size": args.batch_size, "data_dir": args.data_dir,
                                    "precision": args.precision, "device": args.device,
                                    "epochs": 1000,  # a cap: the rounds stay in the warm-up's low lr
                                    "val_size": 0, "check_size": getattr(args, "check_size", True), **flags})
    return build_trainer(cfg, Path("/nonexistent-unused"), log=lambda *_: None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per round")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds of each, after one warm-up round")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-check-size", dest="check_size", action="store_false",
                    help="admit a data set smaller than CIFAR-100 (the GPU script's CPU dry run)")
    ap.add_argument("--out", default="benchmarks/results/records/throughput-cpu.json")
    args = ap.parse_args()

    trainer = benchmark_trainer(args)
    cfg, dev, prec = trainer.cfg, trainer.device, trainer.cfg.precision

    torch.manual_seed(0)
    bare_model = create_model(args.model).to(dev)
    if cfg.channels_last:
        bare_model = bare_model.to(memory_format=torch.channels_last)
    bare_opt = torch.optim.SGD(bare_model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    # the trainer's batches of a round, made beforehand: the bare loop does no data work at all
    bare = list(islice(trainer.batches(trainer.epoch), args.steps))
    bare_x, bare_y = torch.cat([x for x, _ in bare]), torch.cat([y for _, y in bare])

    rows = []
    for r in range(args.rounds + 1):
        t_ips = trainer.run_steps(args.steps)["images_per_s"]
        with small_map_gemm(trainer.gemm_convs):  # the trainer's convolutions too: only the loop differs
            b_ips = bare_round(bare_model, bare_opt, bare_x, bare_y, args.batch_size, prec, dev, cfg.channels_last)
        print(f"round {r}{' (warm-up, discarded)' if r == 0 else ''}: trainer {t_ips:.1f} img/s, "
              f"bare {b_ips:.1f} img/s, ratio {t_ips / b_ips:.3f}", flush=True)
        if r:
            rows.append({"trainer": t_ips, "bare": b_ips, "ratio": t_ips / b_ips})

    result = {
        "benchmark": "throughput",
        **provenance(dev),
        "model": args.model, "batch_size": args.batch_size, "precision": prec,
        "channels_last": cfg.channels_last, "steps_per_round": args.steps,
        "rounds": rows,
        "trainer_images_per_s": statistics.median(r["trainer"] for r in rows),
        "bare_images_per_s": statistics.median(r["bare"] for r in rows),
        "ratio_median": statistics.median(r["ratio"] for r in rows),
    }
    out = Path(args.out)
    checkpoint.atomic_write_json(out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
