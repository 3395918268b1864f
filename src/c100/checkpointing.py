"""What a run writes as it trains, from rank 0 only: last.pt after every epoch, best.pt whenever the
validation accuracy improved, metrics.csv; and what its checkpoints record besides the weights: the best
accuracy, when the target was first reached, each resume."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch.nn as nn

from c100 import UserError, checkpoint, distributed
from c100.atomic import atomic_write_text

CSV_FIELDS = ["epoch", "lr", "res", "train_loss", "train_acc", "val_loss", "val_acc", "epoch_s", "images_per_s",
              "clock_s", "eval_s"]


class Checkpoints:
    """The run folder's writer: judge() each validation, save() after each epoch."""

    def __init__(self, run_dir: Path | str, target_acc: float = 0.0, log=print):
        self.run_dir, self.target_acc, self.log = Path(run_dir), target_acc, log
        self.best_acc = -1.0
        self.best: dict | None = None  # the best weights (rank 0), until best.pt holds them
        self.target: dict | None = None  # when the validation accuracy first reached target_acc
        self.resumes: list[dict] = []  # each resume: at which epoch and step, and what it changed

    def judge(self, val_acc: float, epoch: int, model: nn.Module, ema: nn.Module | None, clock_s: float) -> None:
        """Keep the weights when they validate better than any before (the same all-reduced accuracy on every
        process; rank 0 keeps them) and note the target's first reach."""
        if val_acc > self.best_acc:
            self.best_acc = val_acc
            if distributed.is_main():  # the only one that writes best.pt
                self.best = {"model": _clone(model), "epoch": epoch, "ema": _clone(ema) if ema is not None else None}
        if self.target_acc and self.target is None and val_acc >= self.target_acc:
            self.target = {"val_acc": val_acc, "epoch": epoch, "train_s": round(clock_s, 3)}
            self.log(f"target {self.target_acc:.2%} reached: val {val_acc:.2%} at epoch {epoch}, "
                     f"{clock_s:.1f} s of training")

    def save(self, state: dict, history: list[dict]) -> None:
        """best.pt (when validation improved since the last save), last.pt and metrics.csv, from a training
        state (training_state.py); a full disk stops training with one line that says how to continue."""
        try:
            # best before last: a kill in between leaves last.pt one epoch behind, and replaying that
            # epoch deterministically rewrites the same best.pt.
            if self.best is not None:
                best = dict(state, model=self.best["model"], ema=self.best["ema"], epoch=self.best["epoch"],
                            optimizer=None, scaler=None)
                checkpoint.save(best, self.run_dir / "best.pt")
                self.best = None  # written; keep no second copy in memory
            checkpoint.save(state, self.run_dir / "last.pt")
            write_metrics_csv(history, self.run_dir / "metrics.csv")
        except UserError as e:  # every file is whole, the old one or the new one
            raise UserError(f"{e}; training stopped after epoch {state['epoch']}: make room, then continue with "
                            f"`c100 train --resume {self.run_dir}`") from None

    # -- in checkpoints --------------------------------------------------------------------------
    def state(self) -> dict:
        return {"best_val_acc": self.best_acc if self.best_acc >= 0 else None, "target": self.target,
                "resumes": self.resumes}

    def restore(self, progress: dict) -> None:
        self.best_acc = progress["best_val_acc"] if progress["best_val_acc"] is not None else -1.0
        self.target, self.resumes = progress["target"], progress["resumes"]


def write_metrics_csv(history: list[dict], path: Path) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for row in history:
        w.writerow({k: ("" if row.get(k) is None else row[k]) for k in CSV_FIELDS})
    atomic_write_text(path, buf.getvalue())


def _clone(model: nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
