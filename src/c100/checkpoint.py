"""Checkpoints as a contract: plain tensors and values only (torch.load(weights_only=True) reads them),
the model unwrapped (no `module.` / `_orig_mod.` prefixes), written atomically (temp file + os.replace)
so a crash never leaves a half-written file where a good one was."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from c100 import UserError

FORMAT_VERSION = 1
_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the permissions open() would
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def save(state: dict, path: Path) -> None:
    _atomic(path, lambda f: torch.save(state, f))


def load(path: Path | str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; pass a run folder or a .pt file written by `c100 train`")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad files; all mean the same to the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} is not a readable c100 checkpoint ({first[:120]}); use one written by "
                        f"`c100 train`") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise UserError(f"{path} is not a c100 checkpoint (no model/config inside); use one written by `c100 train`")
    return state


def load_weights(model: nn.Module, state_dict: dict, source: str, arch: str) -> None:
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        detail = str(e).splitlines()[0]
        raise UserError(f"{source} does not fit model '{arch}' ({detail[:100]}...); pass the checkpoint's own "
                        f"--model or another checkpoint") from None


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_rng(state: dict) -> None:
    """The global generators of a training checkpoint (process-wide: resume() sets them once)."""
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"].get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])


def training_state(config: dict, model: nn.Module, ema: nn.Module | None, optimizer, scaler, meta,
                   progress: dict, finished: bool) -> dict:
    """Everything a run needs to continue bit for bit, as plain tensors and values (the contract
    above); `progress` holds the loop's counters (step, epoch, history, clock, ...)."""
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
    }


def restore_training(state: dict, model: nn.Module, ema: nn.Module | None, optimizer, scaler, source: str) -> dict:
    """Load a training checkpoint's weights and optimizer state in place; returns the loop's counters."""
    load_weights(model, state["model"], source, state["config"]["model"])
    if ema is not None and state.get("ema") is not None:
        ema.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
    return {"step": state["scheduler"]["step"], "epoch": state["epoch"], "history": list(state["history"]),
            "best_val_acc": state.get("best_val_acc"), "clock_s": state.get("clock_s", 0.0),
            "compile_s": state.get("compile_s", 0.0), "target": state.get("target")}


def git_revision() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def environment(device: torch.device) -> dict:
    import numpy

    import c100

    return {
        "c100": c100.__version__,
        "git": git_revision(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "device_name": device_name(device),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
    }
