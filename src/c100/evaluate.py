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

from c100 import UserError, checkpoint, data
from c100.config import TrainConfig, from_dict
from c100.folder import read_folder
from c100.inference import Model, load, resolve_source


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
        splits, meta = data.load(cfg.data_dir, cfg.download, ("test",), cfg.check_size)
        return splits["test"], meta
    if not cfg.val_size:
        raise UserError("this run trained on all training images (--val-size 0): it has no validation split")
    splits, meta = data.load(cfg.data_dir, cfg.download, ("train",), cfg.check_size)
    _, va = data.stratified_split(splits["train"].fine, cfg.val_size, cfg.seed)
    return splits["train"].subset(va), meta


def measure(model: Model, images: data.Split, meta: data.Meta, report_tta: bool = False,
            head: dict | None = None) -> tuple[dict, torch.Tensor]:
    """Metrics of a model on a split (and with flip TTA, separately); also returns the logits (CPU)."""
    t0 = time.perf_counter()
    x = torch.from_numpy(images.images)
    logits = model.logits(x).cpu()
    result = {**(head or {}), **metrics(logits, images.fine, meta.fine_to_coarse)}
    if report_tta and not model.tta:  # the log of the mean of each image's and its mirror's probabilities
        mirror = model.logits(x, flip=True).cpu()
        tta_m = metrics((logits.softmax(1) + mirror.softmax(1)).div(2).log(), images.fine, meta.fine_to_coarse)
        result["tta_flip"] = {k: tta_m[k] for k in ("top1", "top5", "superclass", "loss")}
    result["eval_s"] = round(time.perf_counter() - t0, 3)
    result["classes"] = meta.fine_names
    return result, logits


def is_run_checkpoint(model: Model) -> bool:
    """Loaded from a training checkpoint (its results are cached beside it), not an export."""
    return model.source is not None and model.source.suffix not in (".safetensors", ".onnx")


def eval_config(model: Model, data_dir: str | None) -> TrainConfig:
    """The model's training config, reading the data from `data_dir`, else from where its run read it,
    else from the default location (an export's training machine is not this one)."""
    cfg = model.config
    cfg.data_dir = data_dir or (cfg.data_dir if is_run_checkpoint(model) else data.default_data_dir())
    return cfg


def evaluate(source: str | Path = "default", split: str = "test", checkpoint: str = "last", report_tta: bool = False,
             data_dir: str | None = None, device: str = "auto", backend: str = "torch",
             precision: str = "fp32", images: str | Path | None = None) -> dict:
    """Evaluate a model (any source `inference.load` takes) on a split, or on a labelled folder of `images`
    (folder.py), through the reference torch fp32 path unless another `backend` or `precision` is named (the
    result says which). For a run's checkpoint on a split, writes eval-SPLIT-WHICH.json and the logits
    (pred-SPLIT-WHICH.npz, read by the pictures and the report) next to it; for an export, adds what was
    recorded at export time."""
    model = load(source, checkpoint, device, precision, backend)
    if images is not None:
        return evaluate_folder(model, images, report_tta).result
    return evaluate_model(model, split, report_tta, data_dir).result


def result_head(model: Model, split: str) -> dict:
    """What an evaluation result says about the model and the path it ran."""
    card = model.card
    weights = card.get("weights", "model")
    if not is_run_checkpoint(model):
        weights = f"exported ({card.get('dtype', 'float32')}, {model.backend})"
    return {"checkpoint": str(model.source), "epoch": card["trained"]["epochs"], "split": split,
            "arch": model.arch, "weights": weights, "eval_size": model.input_size, "precision": model.precision,
            "backend": model.backend, "tta": model.tta}


def evaluate_model(model: Model, split: str = "test", report_tta: bool = False,
                   data_dir: str | None = None) -> Predictions:
    """evaluate() for a model already loaded."""
    cfg = eval_config(model, data_dir)
    images, meta = load_eval_split(cfg, split)
    if meta.fine_names != model.classes:
        raise UserError(f"the class names of {cfg.data_dir} differ from those {model.source} was trained on; "
                        f"evaluate on the same data set")
    result, logits = measure(model, images, meta, report_tta, result_head(model, split))
    if is_run_checkpoint(model) and model.precision == "fp32":  # the reference path's results only
        ck = model.source
        buf = io.BytesIO()
        np.savez_compressed(buf, logits=logits.numpy(), fine=images.fine)
        checkpoint.atomic_write_bytes(ck.parent / f"pred-{split}-{ck.stem}.npz", buf.getvalue())
        checkpoint.atomic_write_json(ck.parent / f"eval-{split}-{ck.stem}.json", result)
    else:
        result["recorded"] = model.card.get("accuracy", {}).get(split)
    return Predictions(images, logits, meta, result)


def evaluate_folder(model: Model, root: str | Path, report_tta: bool = False) -> Predictions:
    """evaluate_model() on a labelled folder of your own images (one sub-folder per class name): the
    model's own classes label it, so no data set is needed; nothing is cached beside the model."""
    meta = data.Meta(model.classes, model.superclasses, model.fine_to_coarse)
    found = read_folder(root, meta)
    head = {**result_head(model, "images"), "images": str(root)}
    result, logits = measure(model, found.split, meta, report_tta, head)
    result["skipped"] = found.skipped
    return Predictions(found.split, logits, meta, result)


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


def load_predictions(source: str | Path = "default", split: str = "test", checkpoint: str = "last",
                     data_dir: str | None = None, device: str = "auto",
                     images: str | Path | None = None) -> Predictions:
    """A model's logits on a split: for a run's checkpoint, those saved by `evaluate` (computed now if
    absent or older than the checkpoint); for other sources, and for a labelled folder of `images`,
    computed now."""
    ck = resolve_source(source, checkpoint)
    if images is not None:
        return evaluate_folder(load(ck, checkpoint, device, backend="torch"), images)
    cache, js = ck.parent / f"pred-{split}-{ck.stem}.npz", ck.parent / f"eval-{split}-{ck.stem}.json"
    fresh = cache.is_file() and js.is_file() and cache.stat().st_mtime >= ck.stat().st_mtime
    if ck.suffix in (".safetensors", ".onnx") or not fresh:
        return evaluate_model(load(ck, checkpoint, device, backend="torch"), split, False, data_dir)  # data and logits
    cfg = from_dict(checkpoint_config(ck))
    if data_dir:
        cfg.data_dir = data_dir
    images, meta = load_eval_split(cfg, split)
    with np.load(cache) as z:
        logits, fine = torch.from_numpy(z["logits"]), z["fine"]
    if not np.array_equal(fine, images.fine):
        raise UserError(f"{cache} was computed on other data than {cfg.data_dir}; delete it and run again")
    return Predictions(images, logits, meta, json.loads(js.read_text()))


def checkpoint_config(ck: Path) -> dict:
    return checkpoint.load(ck)["config"]


def format_table(r: dict, worst: int = 5) -> str:
    where = f"{r['images']}: labelled folder" if r["split"] == "images" else f"{r['split']} set"
    lines = [f"{where}, {r['n']} images, {r['arch']} ({r['weights']} weights, epoch {r['epoch']}; "
             f"{r.get('backend', 'torch fp32')}{', flip TTA' if r.get('tta') else ''})",
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
    if r.get("skipped"):
        lines.append(f"  skipped: {len(r['skipped'])} file(s) that could not be read (listed on stderr)")
    return "\n".join(lines)
