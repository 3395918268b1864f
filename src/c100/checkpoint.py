"""Checkpoints as a contract: plain tensors and values only (torch.load(weights_only=True) reads them),
the model unwrapped (no `module.` / `_orig_mod.` prefixes), written atomically (temp file + os.replace)
so a crash never leaves a half-written file where a good one was."""

from __future__ import annotations

import errno
import json
import os
import platform
import re
import subprocess
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy
import torch
import torch.nn as nn

import c100
from c100 import UserError
from c100.models import list_models

FORMAT_VERSION = 1
_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic(path: Path, write) -> None:
    """Write `path` through a temp file in its folder (fsync, then os.replace): a crash, a kill or a full
    disk leaves the old file whole. A failure removes the temp file and becomes a one-line UserError."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the permissions open() would
        with os.fdopen(fd, "wb") as f:
            sink = _Sink(f)
            try:
                write(sink)
            except Exception:  # torch.save turns the OSError of a failed write into a RuntimeError
                if sink.error is not None:
                    raise sink.error from None
                raise
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_folder(path.parent)  # the rename itself survives a power cut
    except OSError as e:
        raise UserError(f"cannot write {path}: {os_reason(e)}; {path.name} was left as it was") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


class _Sink:
    """A file's write() that remembers the OSError it raised (a full disk), whatever the writer makes of it."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not every system opens folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def os_reason(e: OSError) -> str:
    """What an OSError means to someone who wants a file written, in a few words."""
    reasons = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
               errno.EFBIG: "the file grew past the size this process may write (ulimit -f)",
               errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
               errno.EPERM: "operation not permitted", errno.ENOTDIR: "a parent of it is a file, not a folder",
               errno.EEXIST: "a parent of it is a file, not a folder", errno.EISDIR: "it is a folder"}
    text = reasons.get(e.errno) or e.strerror or type(e).__name__
    return text.replace("\n", " ")


# A temp file is named .NAME.XXXXXXXX.tmp (mkstemp's eight characters); an older c100 left .NAME.XXXXXXXX
TEMP_SUFFIX = ".tmp"
RUN_FILES = ("last.pt", "best.pt", "metrics.csv", "config.yaml", "env.json")
_NAMES = "|".join(re.escape(n) for n in RUN_FILES)
_STALE = re.compile(rf"^\.({_NAMES})\.[a-z0-9_]{{8}}(\.tmp)?$")


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the temp files a killed writer left in a run folder (ours only: .last.pt.XXXXXXXX.tmp and the
    like); call it where no other process writes the folder (rank 0, before training). Returns them."""
    stale = [p for p in Path(folder).iterdir() if _STALE.match(p.name) and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


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
        return "a damaged archive (" + _first_line(msg) + ")"
    if head[:1] == b"\x80":  # a pickle's PROTO opcode: a plain pickle, or torch's legacy format
        return ("a Python pickle that is not a tensor checkpoint; refused unread, since loading a pickle could "
                "run code")
    return "not a PyTorch checkpoint (its first bytes are neither a zip archive nor a pickle)"


def _first_line(msg: str) -> str:
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
        raise UserError(f"{source} does not fit model '{arch}'{declared} ({_first_line(str(e))})") from None


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
        raise UserError(f"{source} cannot be resumed: its random state is damaged ({_first_line(str(e))}); start a "
                        f"new run") from None


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
        "resumes": progress.get("resumes", []),  # each resume: at which epoch and step, what it changed
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
                        f"({_first_line(str(e))}); start a new run") from None
    return {"step": state["scheduler"]["step"], "epoch": state["epoch"], "history": list(state["history"]),
            "best_val_acc": state.get("best_val_acc"), "clock_s": state.get("clock_s", 0.0),
            "compile_s": state.get("compile_s", 0.0), "target": state.get("target"),
            "resumes": list(state.get("resumes") or [])}


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


# the vector extensions that decide a CPU's speed here (fp32, bf16, int8): one model name ("AMD EPYC")
# has come both with AVX2 only and with AVX512-BF16, a 2x apart in bf16 training and in int8 inference
CPU_FEATURES = (("avx2", "AVX2"), ("avx512f", "AVX512"), ("avx512_vnni", "VNNI"), ("avx512_bf16", "BF16"),
                ("amx_tile", "AMX"))


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The flags line of /proc/cpuinfo (or of the text given), as a set; empty where there is none."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    return set(next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines()
                     if line.startswith("flags")), []))


def cpu_features(cpuinfo: str) -> str:
    """'AVX512 VNNI BF16' from /proc/cpuinfo's flags (AVX2 left out where AVX512 is there)."""
    flags = cpu_flags(cpuinfo)
    names = [name for flag, name in CPU_FEATURES if flag in flags]
    return " ".join(n for n in names if not (n == "AVX2" and "AVX512" in names))


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model, cores and vector extensions: 'AMD EPYC (2 cores, AVX2)'."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        features = cpu_features(cpuinfo)
        for line in cpuinfo.splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores{', ' + features if features else ''})"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def environment(device: torch.device) -> dict:
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
