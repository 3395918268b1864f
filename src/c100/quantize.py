"""Fast CPU inference: the backends a model can run on, int8 quantization, and the choice between them.

Backends: `torch` (fp32, the reference every record measures), `torch-bf16` (autocast; only where the
CPU has native bf16, AMX or AVX512-BF16), `onnx` (ONNX Runtime, fp32), `int8` (ONNX Runtime, a static
per-channel int8 model), and `openvino`, `openvino-int8`: the same two ONNX files compiled by OpenVINO
(the extra `c100[openvino]`). The ONNX forms of a model are derived from it and cached outside the
package (`$C100_CACHE`, else `$XDG_CACHE_HOME/c100`, else ~/.cache/c100), keyed by the hash of the
model's file, never committed.

`c100 quantize MODEL` calibrates the int8 model on training images only (the run's own training part,
never its validation split or the test set), then measures every backend on this machine: top-1
and images/s at batch 100. `auto`, the default of `predict`, `serve` and `c100.load`, then takes the
fastest backend whose validation top-1 (the model's own split, rebuilt from its card's seed and val_size)
is within 0.5 points of torch fp32 on that model; the test top-1 is reported beside it and never chosen
on. Before any measurement (or on another CPU, or for a model without a validation split) it is torch fp32.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from c100 import UserError, checkpoint, data, lock
from c100.device import cpu_has_native_bf16

BACKENDS = ("torch", "torch-bf16", "onnx", "int8", "openvino", "openvino-int8")
TOLERANCE = 0.005  # auto takes a faster backend only within 0.5 points of torch fp32's validation top-1
CALIBRATION_IMAGES = 1000
METHOD = "minmax"  # activation ranges from the calibration images (see benchmarks/int8_calibration.py)
LOCK_WAIT = 600.0  # s a process waits for another deriving the same ONNX file (an export takes seconds)
VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}  # int8 dot products without 16-bit overflow: 8-bit weights


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
        from c100.export import export

        with writing(out, wait=LOCK_WAIT):
            if not out.is_file():  # written by the process this one waited for
                export(path, "onnx", out=out)
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


# -- int8 -----------------------------------------------------------------------------------------


def calibration_images(model, data_dir: str | None, n: int, seed: int = 0) -> np.ndarray:
    """n images from the model's own training part of the training set (its validation split and the
    test set excluded), stratified by class."""
    from c100.evaluate import eval_config

    cfg = eval_config(model, data_dir)
    try:
        splits, _ = data.load(cfg.data_dir, False, ("train",), cfg.check_size)
    except UserError as e:
        raise UserError(f"int8 calibration needs the training images: {e}") from None
    train = splits["train"]
    idx = np.arange(len(train))
    if cfg.val_size:
        idx, _ = data.stratified_split(train.fine, cfg.val_size, cfg.seed)
    _, pick = data.stratified_split(train.fine[idx], min(n, len(idx) - 1), seed)
    return train.images[idx[pick]]


def quantize(source: str | Path, data_dir: str | None = None, which: str = "last",
             images: int = CALIBRATION_IMAGES, log=print) -> tuple[Path, dict]:
    """Write the int8 model of `source` into the cache, measure every backend on the validation split (the
    choice) and the test set (reported) and on this CPU, and record the choice `auto` makes. Returns the int8
    file and the measurements."""
    from c100.inference import load, resolve_source

    path = resolve_source(source, which)
    model = load(path, device="cpu", backend="torch")
    if path.suffix == ".onnx":
        raise UserError(f"quantize the model {path.name} was exported from (its run or .safetensors), not the "
                        f"ONNX graph")
    with writing(cached(path, "int8")):  # two `c100 quantize` of one model: the second stops at once
        return _quantize(model, path, data_dir, images, log)


def _quantize(model, path: Path, data_dir: str | None, images: int, log) -> tuple[Path, dict]:
    fp32 = onnx_fp32(path)
    x = calibration_images(model, data_dir, images)
    batches = calibration_batches(model, x)

    out = cached(path, "int8")
    t0 = time.perf_counter()
    vnni = bool(checkpoint.cpu_flags() & VNNI_FLAGS)
    # the stem and the classifier stay fp32: quantizing them cost 1.4 val points, keeping them 0
    # (benchmarks/results/sweeps/13-int8-calibration)
    settings = {"reduce_range": not vnni, "method": METHOD, "exclude": edge_nodes(fp32)}
    write_int8(fp32, out, batches, **settings)
    card = dict(model.card, quantization={"kind": "onnxruntime static, QDQ, per-channel int8 weights, uint8 "
                                                  "activations", **settings, "exclude": list(settings["exclude"]),
                                          "calibration_images": len(x), "source": path.name,
                                          "seconds": round(time.perf_counter() - t0, 1)})
    card.pop("dtype", None)
    checkpoint.atomic_write_json(out.with_name(out.name + ".json"), card)
    log(f"int8 model: {out} ({len(x)} calibration images, {card['quantization']['seconds']} s)")
    table = measure_backends(path, data_dir, log)
    card["accuracy"] = {split: table["backends"]["int8"][split] for split in ("val", "test")
                        if table["backends"]["int8"][split]}
    checkpoint.atomic_write_json(out.with_name(out.name + ".json"), card)
    return out, table


def calibration_batches(model, images: np.ndarray, batch: int = 50) -> list[np.ndarray]:
    """uint8 images as the network's input: normalised and resized as Model.logits feeds them."""
    from c100.augment import Normalize, resize

    x, norm = torch.from_numpy(images), Normalize(model.normalization, torch.device("cpu"))
    return [resize(norm(x[i:i + batch]), model.input_size).numpy() for i in range(0, len(x), batch)]


def edge_nodes(path: Path) -> tuple[str, str]:
    """The names of the first convolution (the stem) and the last Gemm/MatMul (the classifier) of an
    ONNX graph."""
    import onnx

    nodes = onnx.load(str(path)).graph.node
    first = next(n.name for n in nodes if n.op_type == "Conv")
    last = [n.name for n in nodes if n.op_type in ("Gemm", "MatMul")][-1]
    return first, last


def write_int8(fp32: Path, out: Path, batches: list[np.ndarray], reduce_range: bool, method: str = "minmax",
               exclude: tuple[str, ...] = ()) -> None:
    """ONNX Runtime's static quantization of `fp32` into `out`: QDQ, per-channel int8 weights, uint8
    activations (its choice for x86), calibrated on `batches` (normalised, at the input size).
    reduce_range keeps 7-bit weights, which CPUs without VNNI need against overflow in their u8s8
    kernels; `method` is how activation ranges are set from the calibration batches."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches)

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else {"images": b}

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    with tempfile.TemporaryDirectory() as tmp:
        pre, tmp_out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32), str(pre))
        quantize_static(str(pre), str(tmp_out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=reduce_range,
                        calibrate_method=methods[method], nodes_to_exclude=list(exclude))
        checkpoint.atomic_write_bytes(out, tmp_out.read_bytes())


def measure_backends(path: Path, data_dir: str | None, log=print, batch: int = 100, rounds: int = 3) -> dict:
    """Validation top-1 (what `auto` chooses on), test top-1 (reported beside it, never chosen on) and
    images/s at `batch` of every backend available here; the choice `auto` makes. The speeds are medians of
    `rounds` rounds with the backends interleaved in each, so a machine that slows down for a while (another
    job, a noisy neighbour) slows every backend alike: one pass each once made OpenVINO int8 798 img/s
    against ONNX Runtime int8's 1,020, where a minute later side by side they ran 1,290 and 906."""
    from c100.inference import load

    models = {name: load(path, device="cpu", backend=name) for name in BACKENDS if runnable(name)}
    rows = {}
    for name, m in models.items():
        rows[name] = {split: accuracy(m, split, data_dir) for split in ("val", "test")}
    speeds = interleaved_speeds(models, batch, rounds)
    for name, row in rows.items():
        row["images_per_s"] = round(float(np.median(speeds[name])), 1)
        row["rounds_images_per_s"] = [round(v, 1) for v in speeds[name]]
        val = f"val top-1 {row['val']['top1']:.2%}, " if row["val"] else ""
        log(f"{name:<13} {val}test top-1 {row['test']['top1']:.2%}  {row['images_per_s']:.0f} img/s at batch "
            f"{batch} (median of {rounds} rounds)")
    auto = fastest(rows) if rows["torch"]["val"] else "torch"
    table = {"cpu": checkpoint.device_name(torch.device("cpu")), "torch": torch.__version__, "batch": batch,
             "rounds": rounds, "tolerance": TOLERANCE, "chosen_on": "val", "backends": rows, "auto": auto}
    checkpoint.atomic_write_json(cached(path, "backends"), table)
    if rows["torch"]["val"]:
        log(f"auto: {auto} (the fastest within {TOLERANCE:.1%} of torch fp32's validation top-1 on this CPU)")
    else:
        log("auto: torch (the model kept no validation split to choose another backend on; the test set is "
            "never chosen on)")
    return table


def accuracy(model, split: str, data_dir: str | None) -> dict | None:
    """top-1, top-5, superclass and n of a backend on a split; None for the validation split of a model that
    trained on every training image."""
    from c100.evaluate import evaluate_model

    try:
        r = evaluate_model(model, split, data_dir=data_dir).result
    except UserError:
        if split == "val":
            return None
        raise
    return {k: r[k] for k in ("top1", "top5", "superclass", "n")}


def interleaved_speeds(models: dict, batch: int, rounds: int) -> dict[str, list[float]]:
    """Images/s of each model at `batch` on the same random images, in `rounds` rounds, each round timing
    every model once in turn."""
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (batch * 4, 3, 32, 32), dtype=np.uint8))
    for m in models.values():
        m.logits(x[:batch])  # warm-up: first-call allocation and kernel selection
    speeds: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, m in models.items():
            t0 = time.perf_counter()
            m.logits(x, batch_size=batch)
            speeds[name].append(len(x) / (time.perf_counter() - t0))
    return speeds
