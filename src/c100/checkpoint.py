"""Checkpoints as a contract: plain tensors and values only (torch.load(weights_only=True) reads them),
the model unwrapped (no `module.` / `_orig_mod.` prefixes), written atomically (temp file + os.replace)
so a crash never leaves a half-written file where a good one was. Here: saving and loading one, and the
checks that what it holds fits (weights, model card). What training keeps in one is training_state.py;
the machine a run ran on, machine.py; atomic writes of any file, atomic.py."""

from __future__ import annotations

import re
import warnings
import zipfile
from pathlib import Path

import torch
import torch.nn as nn

from c100 import UserError
from c100.atomic import write_atomic as _atomic  # the one writer of checkpoints (tests replace it here)
from c100.models import list_models

# Re-exported for the modules that import them from here (inference, evaluate, export, quantize, the
# benchmarks, the tests); new code imports them from their own modules.
__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_text", "os_reason", "remove_stale_temps",
           "cpu_features", "cpu_flags", "device_name", "environment", "git_revision"]
from c100.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text, os_reason, remove_stale_temps  # noqa: E402, I001
from c100.machine import cpu_features, cpu_flags, device_name, environment, git_revision  # noqa: E402


def save(state: dict, path: Path) -> None:
    _atomic(path, lambda f: torch.save(state, f))


def load(path: Path | str) -> dict:
    """A c100 checkpoint, read as plain tensors and values only: a file holding any other Python object is
    refused before anything in it runs (torch.load weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; pass a run folder or a .pt file written by `c100 train`")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols: our error says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad files; all mean the same to the user
        raise UserError(f"{path} is not a readable c100 checkpoint: {_unreadable(path, e)}; use one written by "
                        f"`c100 train`") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise UserError(f"{path} is not a c100 checkpoint (no model/config inside); use one written by `c100 train`")
    if not isinstance(state["config"], dict) or not isinstance(state["model"], dict):
        raise UserError(f"{path} is not a c100 checkpoint (its model or config is not a mapping); use one written "
                        f"by `c100 train`")
    return state


def _unreadable(path: Path, e: Exception) -> str:
    """Why torch.load refused a file, in one line (torch's own messages run to a screenful)."""
    msg = str(e)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", msg)
    if found:
        return (f"it holds a Python object ({found.group(1)}) where a checkpoint holds only tensors and plain "
                f"values; refused unread, since loading it could run code")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        return os_reason(err)
    if not head:
        return "the file is empty"
    if head.startswith(b"PK"):
        if not zipfile.is_zipfile(path):
            return "the file is truncated (an incomplete zip archive: a copy cut short, or a disk that filled)"
        return "a damaged archive (" + first_line(msg) + ")"
    if head[:1] == b"\x80":  # a pickle's PROTO opcode: a plain pickle, or torch's legacy format
        return ("a Python pickle that is not a tensor checkpoint; refused unread, since loading a pickle could "
                "run code")
    return "not a PyTorch checkpoint (its first bytes are neither a zip archive nor a pickle)"


def first_line(msg: str) -> str:
    inner = re.search(r"WeightsUnpickler error: *(.+)", msg)  # past torch's advice to load unsafely
    text = inner.group(1) if inner else msg
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines() if ln.strip()]
    return (lines[0] if lines else "unknown error")[:120]


def load_weights(model: nn.Module, state_dict: dict, source: str, arch: str, declared: str = "") -> None:
    """Load `state_dict` into `model`, or say in one line how it does not fit (what is missing, unexpected or
    of another shape) or that it holds NaN/inf; `declared` says where the architecture came from."""
    want = model.state_dict()
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise UserError(f"{source} holds no weight tensors where the model's weights belong; use a file written "
                        f"by `c100 train` or `c100 export`")
    missing = [k for k in want if k not in state_dict]
    extra = [k for k in state_dict if k not in want]
    shaped = [k for k in want if k in state_dict and state_dict[k].shape != want[k].shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} of its {len(want)} tensors missing, e.g. {missing[0]}")
    if extra:
        parts.append(f"{len(extra)} unexpected, e.g. {extra[0]}")
    if shaped:
        k = shaped[0]
        parts.append(f"{k} is {_shape(state_dict[k])} in the file but {_shape(want[k])} in the model")
    if parts:
        raise UserError(f"{source} does not fit model '{arch}'{declared} ({'; '.join(parts)}): weights of another "
                        f"architecture or class count; use the file's own sidecar or checkpoint") from None
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise UserError(f"{source} holds non-finite weights (NaN or inf in {bad[0]}"
                        f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}): the training that wrote it "
                        f"diverged; train again with a lower --lr")
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:  # a dtype torch cannot cast, say
        raise UserError(f"{source} does not fit model '{arch}'{declared} ({first_line(str(e))})") from None


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "a scalar"


def check_card(card: dict, source: str) -> None:
    """A model card (an export's sidecar, or what a checkpoint says of itself) names a registered
    architecture and as many class names and superclass indices as it has classes."""
    def bad(what: str):
        raise UserError(f"{source}: {what}; export the model again (or fix the file)")

    arch, n = card.get("arch"), card.get("num_classes")
    if not isinstance(arch, str) or not arch:
        bad("no 'arch' (the architecture's name)")
    if arch not in list_models():
        bad(f"arch '{arch}' is not a registered model (known: {', '.join(list_models())})")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        bad(f"'num_classes' must be a positive whole number, got {n!r}")
    classes, supers, f2c = card.get("classes"), card.get("superclasses"), card.get("fine_to_coarse")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        bad("'classes' must be a list of class names")
    if len(classes) != n:
        bad(f"{len(classes)} class names for num_classes {n}")
    if not isinstance(supers, list) or not all(isinstance(c, str) for c in supers):
        bad("'superclasses' must be a list of names")
    if (not isinstance(f2c, list) or len(f2c) != n
            or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(supers) for i in f2c)):
        bad(f"'fine_to_coarse' must list one superclass index (0..{len(supers) - 1}) for each of the {n} classes")
    norm = card.get("normalize")
    if not isinstance(norm, dict) or norm.get("kind") not in ("cifar100", "none"):
        bad("'normalize' must say its kind: cifar100 or none")
    shape = card.get("input", {}).get("shape", [3, 32, 32]) if isinstance(card.get("input", {}), dict) else None
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(i, int) for i in shape)
            and 8 <= shape[-1] <= 1024):
        bad(f"'input.shape' must be [3, SIZE, SIZE], got {shape!r}")
    trained = card.get("trained", {})
    if not isinstance(trained, dict) or not isinstance(trained.get("config") or {}, dict):
        bad("'trained.config' must be a mapping of config keys")
