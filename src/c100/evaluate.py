"""Evaluation of a trained run: top-1, top-5, superclass (fine predictions mapped to their coarse
class), per-class accuracy; optional horizontal-flip test-time augmentation, reported separately.

The test set is meant to be read once, at the end: training never touches it, and `evaluate` on the
test split is the only place that loads it.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from c100 import UserError, checkpoint, data
from c100.augment import Normalize, at_size
from c100.config import from_dict
from c100.device import autocast, select_device
from c100.models import create_model
from c100.models.fold import fold_batchnorm


def resolve_checkpoint(run: str | Path, which: str = "last") -> Path:
    """A run folder (picks last.pt or best.pt) or a checkpoint file."""
    p = Path(run)
    if p.is_dir():
        ck = p / f"{which}.pt"
        if not ck.is_file():
            hint = " (best.pt exists only for runs with a validation split)" if which == "best" else ""
            raise UserError(f"{ck} not found{hint}; train first or point at another run")
        return ck
    if p.is_file():
        return p
    raise UserError(f"{run} is neither a run folder nor a checkpoint file; pass a folder written by `c100 train`")


def load_model(state: dict, source: str, device: torch.device, use_ema: bool = True,
               channels_last: bool = False, fold: bool = False) -> nn.Module:
    """The checkpoint's network in eval mode; with `fold`, BatchNorm folded into the convolutions
    for inference (1.1x faster on the CPU, same outputs: models/fold.py), else with its own layers."""
    arch = state.get("arch") or state["config"].get("model")
    model = create_model(arch)
    weights = state["ema"] if use_ema and state.get("ema") is not None else state["model"]
    checkpoint.load_weights(model, weights, source, arch)
    model = model.to(device).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return fold_batchnorm(model) if fold else model


@torch.no_grad()
def predict_with_flip(model: nn.Module, images: torch.Tensor, norm: Normalize, batch_size: int = 100,
                      tta_flip: bool = False, precision: str = "fp32",
                      channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits (float32, on CPU) for uint8 images N x 3 x 32 x 32 on the model's device and, with
    tta_flip, the log of the mean of each image's and its mirror's probabilities: one more forward
    pass, since the plain logits are the first half of the TTA."""
    device = next(model.parameters()).device
    plain, flipped = [], []
    for i in range(0, len(images), batch_size):
        x = norm(images[i:i + batch_size].to(device))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(precision, device):
            logits = model(x).float()
            if tta_flip:
                mirror = model(x.flip(3)).float()
                flipped.append((logits.softmax(1) + mirror.softmax(1)).div(2).log().cpu())
        plain.append(logits.cpu())
    return torch.cat(plain), torch.cat(flipped) if tta_flip else None


def predict_logits(model: nn.Module, images: torch.Tensor, norm: Normalize, batch_size: int = 100,
                   precision: str = "fp32", channels_last: bool = False) -> torch.Tensor:
    """Logits (float32, on CPU) for uint8 images N x 3 x 32 x 32 on the model's device."""
    return predict_with_flip(model, images, norm, batch_size, False, precision, channels_last)[0]


def metrics(logits: torch.Tensor, fine: np.ndarray, fine_to_coarse: list[int]) -> dict:
    y = torch.as_tensor(fine)
    top5 = logits.topk(5, 1).indices
    pred = top5[:, 0]
    f2c = torch.as_tensor(fine_to_coarse)
    per_class = []
    for c in range(logits.shape[1]):
        m = y == c
        per_class.append(round((pred[m] == c).float().mean().item(), 4) if m.any() else None)
    return {
        "n": len(y),
        "top1": (pred == y).float().mean().item(),
        "top5": (top5 == y[:, None]).any(1).float().mean().item(),
        "superclass": (f2c[pred] == f2c[y]).float().mean().item(),
        "loss": torch.nn.functional.cross_entropy(logits, y).item(),
        "per_class": per_class,
    }


def load_eval_split(cfg, split: str) -> tuple[data.Split, data.Meta]:
    if split == "test":
        splits, meta = data.load(cfg.data_dir, cfg.download, splits=("test",))
        return splits["test"], meta
    if not cfg.val_size:
        raise UserError("this run trained on all training images (--val-size 0): it has no validation split")
    splits, meta = data.load(cfg.data_dir, cfg.download, splits=("train",))
    _, va = data.stratified_split(splits["train"].fine, cfg.val_size, cfg.seed)
    return splits["train"].subset(va), meta


def measure(model: nn.Module, norm: Normalize, images: data.Split, meta: data.Meta, tta: bool = False,
            head: dict | None = None, batch_size: int = 100, channels_last: bool = False) -> tuple[dict, torch.Tensor]:
    """Metrics of a model on a split (and with flip TTA, separately); also returns the logits."""
    x = torch.from_numpy(images.images)
    t0 = time.perf_counter()
    logits, flipped = predict_with_flip(model, x, norm, batch_size, tta, channels_last=channels_last)
    result = {**(head or {}), **metrics(logits, images.fine, meta.fine_to_coarse)}
    if tta:
        tta_m = metrics(flipped, images.fine, meta.fine_to_coarse)
        result["tta_flip"] = {k: tta_m[k] for k in ("top1", "top5", "superclass", "loss")}
    result["eval_s"] = round(time.perf_counter() - t0, 3)
    result["classes"] = meta.fine_names
    return result, logits


def evaluate_run(run: str | Path, split: str = "test", which: str = "last", tta: bool = False,
                 data_dir: str | None = None, device: str = "auto") -> dict:
    """Evaluate a run's checkpoint on a split; writes eval-SPLIT-WHICH.json and the logits
    (pred-SPLIT-WHICH.npz, read by the pictures and the report) next to the checkpoint."""
    return _evaluate(run, split, which, tta, data_dir, device).result


def _evaluate(run, split, which, tta, data_dir, device) -> Predictions:
    ck = resolve_checkpoint(run, which)
    state = checkpoint.load(ck)
    cfg = from_dict(state["config"])
    if data_dir:
        cfg.data_dir = data_dir
    dev = select_device(device)
    size = cfg.eval_size()
    model = at_size(load_model(state, str(ck), dev, channels_last=cfg.channels_last, fold=True), size)
    images, meta = load_eval_split(cfg, split)
    if meta.fine_names != state.get("classes", meta.fine_names):
        raise UserError(f"the class names of {cfg.data_dir} differ from those {ck} was trained on; "
                        f"evaluate on the same data set")
    head = {"checkpoint": str(ck), "epoch": state["epoch"], "split": split, "arch": state["arch"],
            "weights": "ema" if state.get("ema") is not None else "model", "eval_size": size}
    # the run's own evaluation batch and layout: NHWC at batch 100 is 1.7x faster than NCHW at 500 on
    # the 2-core CPU (104 vs 62 img/s); GPU presets set a larger batch
    result, logits = measure(model, Normalize(cfg.normalize, dev), images, meta, tta, head,
                             cfg.eval_batch_size, cfg.channels_last)
    buf = io.BytesIO()
    np.savez_compressed(buf, logits=logits.numpy(), fine=images.fine)
    checkpoint.atomic_write_bytes(ck.parent / f"pred-{split}-{ck.stem}.npz", buf.getvalue())
    checkpoint.atomic_write_json(ck.parent / f"eval-{split}-{ck.stem}.json", result)
    return Predictions(images, logits, meta, result)


@dataclass
class Predictions:
    """A split's images and labels with a model's logits: what the pictures and the report draw."""

    split: data.Split
    logits: torch.Tensor
    meta: data.Meta
    result: dict  # the eval JSON

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.softmax(1)


def load_predictions(run: str | Path, split: str = "test", which: str = "last", data_dir: str | None = None,
                     device: str = "auto") -> Predictions:
    """The logits saved by `evaluate` (computed now if absent or older than the checkpoint)."""
    ck = resolve_checkpoint(run, which)
    cache, js = ck.parent / f"pred-{split}-{ck.stem}.npz", ck.parent / f"eval-{split}-{ck.stem}.json"
    if not (cache.is_file() and js.is_file() and cache.stat().st_mtime >= ck.stat().st_mtime):
        return _evaluate(run, split, which, False, data_dir, device)  # already holds data and logits
    state = checkpoint.load(ck)
    cfg = from_dict(state["config"])
    if data_dir:
        cfg.data_dir = data_dir
    images, meta = load_eval_split(cfg, split)
    with np.load(cache) as z:
        logits, fine = torch.from_numpy(z["logits"]), z["fine"]
    if not np.array_equal(fine, images.fine):
        raise UserError(f"{cache} was computed on other data than {cfg.data_dir}; delete it and run again")
    return Predictions(images, logits, meta, json.loads(js.read_text()))


def format_table(r: dict, worst: int = 5) -> str:
    lines = [f"{r['split']} set, {r['n']} images, {r['arch']} ({r['weights']} weights, epoch {r['epoch']})",
             f"  top-1       {r['top1']:.2%}", f"  top-5       {r['top5']:.2%}",
             f"  superclass  {r['superclass']:.2%}", f"  loss        {r['loss']:.4f}"]
    if "tta_flip" in r:
        t = r["tta_flip"]
        lines.append(f"  with flip TTA: top-1 {t['top1']:.2%}  top-5 {t['top5']:.2%}  superclass {t['superclass']:.2%}")
    scored = [(a, n) for a, n in zip(r["per_class"], r["classes"], strict=True) if a is not None]
    if scored:
        scored.sort()
        lines.append("  hardest classes: " + ", ".join(f"{n} {a:.0%}" for a, n in scored[:worst]))
        lines.append("  easiest classes: " + ", ".join(f"{n} {a:.0%}" for a, n in scored[::-1][:worst]))
    return "\n".join(lines)
