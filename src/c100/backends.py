"""The backends a model can run on, the files each one needs, and the `auto` choice between them.

Backends: `torch` (fp32, the reference every record measures), `torch-bf16` (autocast; only where the
CPU has native bf16, AMX or AVX512-BF16), `onnx` (ONNX Runtime, fp32), `int8` (ONNX Runtime, a static
per-channel int8 model), and `openvino`, `openvino-int8`: the same two ONNX files compiled by OpenVINO
(the extra `c100[openvino]`). The ONNX forms of a model are derived from it and cached outside the
package (`$C100_CACHE`, else `$XDG_CACHE_HOME/c100`, else ~/.cache/c100), keyed by the hash of the
model's file, never committed.

`auto`, the default of `predict`, `serve` and `c100.load`, takes the fastest backend whose validation
top-1 is within 0.5 points of torch fp32, as `c100 quantize` (quantize.py) measured it on this CPU; before
any measurement (or on another CPU, or for a model without a validation split) it is torch fp32.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
from pathlib import Path

import torch

from c100 import UserError, checkpoint, lock
from c100.device import cpu_has_native_bf16
from c100.networks import read_network
from c100.runtimes import write_onnx

BACKENDS = ("torch", "torch-bf16", "onnx", "int8", "openvino", "openvino-int8")
TOLERANCE = 0.005  # auto takes a faster backend only within 0.5 points of torch fp32's validation top-1
LOCK_WAIT = 600.0  # s a process waits for another deriving the same ONNX file (an export takes seconds)


def cache_dir() -> Path:
    root = os.environ.get("C100_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "c100"
    return Path(root)


def file_key(path: Path) -> str:
    """A short hash of the file's bytes, read once per version of the file (one load may ask several times)."""
    st = Path(path).stat()
    return _hash(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _hash(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def cached(path: Path, kind: str) -> Path:
    """Where a derived form of the model in `path` lives: kind is fp32 (ONNX), int8 or backends (JSON)."""
    suffix = "json" if kind == "backends" else "onnx"
    return cache_dir() / f"{path.stem}-{file_key(path)}-{kind}.{suffix}"


def onnx_fp32(path: Path) -> Path:
    """The model as fp32 ONNX: itself if it is one, else exported once into the cache."""
    if path.suffix == ".onnx":
        return path
    out = cached(path, "fp32")
    if not out.is_file():
        with writing(out, wait=LOCK_WAIT):
            if not out.is_file():  # written by the process this one waited for
                write_onnx(*read_network(path), out)
    return out


def writing(entry: Path, wait: float = 0.0):
    """The lock of one cache entry while it is derived: one writer, as in a run folder. A second process
    waits up to `wait` seconds for the first (then finds the file made), or is refused, naming its pid."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write {entry}: {checkpoint.os_reason(e)}; set C100_CACHE to a writable "
                        f"folder") from None
    return lock.hold(entry.with_name(f".{entry.name}.lock"), f"{entry} is being written by another c100; wait "
                                                              f"for it to finish", wait)


def backend_file(path: Path, backend: str) -> tuple[Path, str]:
    """(file to load, precision) for a named backend of the model in `path`."""
    if backend not in BACKENDS:
        raise UserError(f"--backend '{backend}' is not one of: auto, {', '.join(BACKENDS)}")
    if backend == "torch":
        return path, "fp32"
    if backend == "torch-bf16":
        if not cpu_has_native_bf16() and not torch.cuda.is_available():
            raise UserError("--backend torch-bf16 needs a CPU with AMX or AVX512-BF16 (elsewhere bf16 is emulated "
                            "and slow); use torch, onnx or int8")
        if path.suffix == ".onnx":
            raise UserError(f"{path} is an ONNX graph: it runs on the onnx or int8 backend only")
        return path, "bf16"
    if backend in ("onnx", "openvino"):
        return onnx_fp32(path), "fp32"
    int8 = path if path.name.endswith("-int8.onnx") else cached(path, "int8")
    if not int8.is_file():
        raise UserError(f"no int8 model of {path.name} yet: run `c100 quantize {path}` once (it calibrates on "
                        f"training images, so it needs the data set)")
    return int8, "fp32"


def choose(path: Path) -> str:
    """The fastest backend within TOLERANCE of torch fp32, as `c100 quantize` measured it on this CPU and
    as this installation can run (the cache outlives environments: one without onnxruntime gets torch)."""
    table = cached(path, "backends")
    if path.suffix == ".onnx" or not table.is_file():
        return "onnx" if path.suffix == ".onnx" else "torch"
    try:
        m = json.loads(table.read_text())
    except (OSError, ValueError):
        return "torch"
    if m.get("cpu") != checkpoint.device_name(torch.device("cpu")):
        return "torch"
    try:  # the table's own choice, redone over what this environment runs
        return fastest({n: r for n, r in m["backends"].items() if n in BACKENDS and runnable(n)})
    except (KeyError, TypeError, ValueError, AttributeError):
        return "torch"


def runnable(backend: str) -> bool:
    """Whether this installation and CPU can run a backend (its file aside)."""
    if backend == "torch-bf16":
        return cpu_has_native_bf16()
    if backend in ("onnx", "int8"):
        return importlib.util.find_spec("onnxruntime") is not None
    if backend.startswith("openvino"):
        return importlib.util.find_spec("openvino") is not None
    return backend == "torch"


def fastest(rows: dict) -> str:
    """The fastest of measured backends whose validation top-1 is within TOLERANCE of torch fp32's (a table
    measured before the choice moved to the validation split has none: KeyError, and `choose` keeps torch)."""
    ref = rows["torch"]["val"]["top1"]
    ok = {n: v for n, v in rows.items() if v["val"]["top1"] >= ref - TOLERANCE}
    return max(ok, key=lambda n: ok[n]["images_per_s"])
