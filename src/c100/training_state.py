"""What a checkpoint holds for training to continue bit for bit: the weights (and their average), the
optimizer, the grad scaler, the global random generators and the loop's counters, as plain tensors and
values (the contract of checkpoint.py), and the check that a last.pt can be resumed from."""

from __future__ import annotations

import torch
import torch.nn as nn

from c100 import UserError
from c100.checkpoint import first_line, load_weights

FORMAT_VERSION = 1
TRAINING_KEYS = {"model": dict, "optimizer": dict, "scheduler": dict, "epoch": int, "rng": dict, "config": dict,
                 "history": list}


def check_training_state(state: dict, source: str) -> None:
    """What resuming needs from last.pt is there, of the right kinds (a file written by `c100 train`)."""
    for key, kind in TRAINING_KEYS.items():
        if not isinstance(state.get(key), kind):
            what = "missing" if key not in state else f"a {type(state[key]).__name__}, not a {kind.__name__}"
            raise UserError(f"{source} cannot be resumed: its '{key}' is {what}; it was not written by `c100 "
                            f"train` (or was damaged); start a new run")
    if not isinstance(state["scheduler"].get("step"), int) or not isinstance(state["rng"].get("torch"), torch.Tensor):
        raise UserError(f"{source} cannot be resumed: its scheduler step or random state is missing; start a new run")


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_rng(state: dict, source: str = "the checkpoint") -> None:
    """The global generators of a training checkpoint (process-wide: resume() sets them once)."""
    try:
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"].get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    except (RuntimeError, TypeError, KeyError) as e:
        raise UserError(f"{source} cannot be resumed: its random state is damaged ({first_line(str(e))}); start a "
                        f"new run") from None


def training_state(config: dict, model: nn.Module, ema: nn.Module | None, optimizer, scaler, meta,
                   progress: dict, finished: bool) -> dict:
    """Everything a run needs to continue bit for bit, as plain tensors and values; `progress` holds the
    loop's counters (step, epoch, history, clock, ...)."""
    return {
        "format": FORMAT_VERSION,
        "arch": config["model"],
        "model": model.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "optimizer": optimizer.state_dict(),
        "scheduler": {"step": progress["step"], "total_steps": progress["total_steps"]},
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "epoch": progress["epoch"],
        "finished": finished,
        "rng": rng_state(),
        "config": config,
        "classes": meta.fine_names,
        "superclasses": meta.coarse_names,
        "fine_to_coarse": meta.fine_to_coarse,
        "history": progress["history"],
        "best_val_acc": progress["best_val_acc"],
        "clock_s": progress["clock_s"],
        "compile_s": progress["compile_s"],
        "target": progress["target"],
        "resumes": progress.get("resumes", []),  # each resume: at which epoch and step, what it changed
        "example_losses": progress.get("example_losses"),  # --keep-hardest: each image's last loss
    }


def restore_training(state: dict, model: nn.Module, ema: nn.Module | None, optimizer, scaler, source: str) -> dict:
    """Load a training checkpoint's weights and optimizer state in place; returns the loop's counters."""
    check_training_state(state, source)
    load_weights(model, state["model"], source, state["config"].get("model", "?"))
    try:
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{source} cannot be resumed: its EMA or optimizer state does not fit the model "
                        f"({first_line(str(e))}); start a new run") from None
    return {"step": state["scheduler"]["step"], "epoch": state["epoch"], "history": list(state["history"]),
            "best_val_acc": state.get("best_val_acc"), "clock_s": state.get("clock_s", 0.0),
            "compile_s": state.get("compile_s", 0.0), "target": state.get("target"),
            "resumes": list(state.get("resumes") or []), "example_losses": state.get("example_losses")}
