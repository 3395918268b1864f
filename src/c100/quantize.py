"""`c100 quantize MODEL`: the int8 model, and the measurements `auto` chooses a backend on (backends.py).

It calibrates the int8 model on training images only (the run's own training part, never its validation
split or the test set), writes it into the cache, then measures every backend on this machine: top-1 and
images/s at batch 100. `auto` then takes the fastest backend whose validation top-1 (the model's own split,
rebuilt from its card's seed and val_size) is within 0.5 points of torch fp32 on that model; the test top-1
is reported beside it and never chosen on.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from c100 import UserError, data
from c100 import checkpoint as ckpt
from c100.augment import Normalize, resize
from c100.backends import BACKENDS, TOLERANCE, cached, fastest, onnx_fp32, runnable, writing
from c100.evaluate import eval_config, evaluate_model
from c100.inference import Model, load, resolve_source

CALIBRATION_IMAGES = 1000
METHOD = "minmax"  # activation ranges from the calibration images (see benchmarks/int8_calibration.py)
VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}  # int8 dot products without 16-bit overflow: 8-bit weights


def calibration_images(model: Model, data_dir: str | None, n: int, seed: int = 0) -> np.ndarray:
    """n images from the model's own training part of the training set (its validation split and the
    test set excluded), stratified by class."""
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


def quantize(source: str | Path, data_dir: str | None = None, checkpoint: str = "last",
             images: int = CALIBRATION_IMAGES, log=print) -> tuple[Path, dict]:
    """Write the int8 model of `source` into the cache, measure every backend on the validation split (the
    choice) and the test set (reported) and on this CPU, and record the choice `auto` makes. Returns the int8
    file and the measurements."""
    path = resolve_source(source, checkpoint)
    model = load(path, device="cpu", backend="torch")
    if path.suffix == ".onnx":
        raise UserError(f"quantize the model {path.name} was exported from (its run or .safetensors), not the "
                        f"ONNX graph")
    with writing(cached(path, "int8")):  # two `c100 quantize` of one model: the second stops at once
        return _quantize(model, path, data_dir, images, log)


def _quantize(model: Model, path: Path, data_dir: str | None, images: int, log) -> tuple[Path, dict]:
    fp32 = onnx_fp32(path)
    x = calibration_images(model, data_dir, images)
    batches = calibration_batches(model, x)

    out = cached(path, "int8")
    t0 = time.perf_counter()
    vnni = bool(ckpt.cpu_flags() & VNNI_FLAGS)
    # the stem and the classifier stay fp32: quantizing them cost 1.4 val points, keeping them 0
    # (benchmarks/results/sweeps/13-int8-calibration)
    settings = {"reduce_range": not vnni, "method": METHOD, "exclude": edge_nodes(fp32)}
    write_int8(fp32, out, batches, **settings)
    card = dict(model.card, quantization={"kind": "onnxruntime static, QDQ, per-channel int8 weights, uint8 "
                                                  "activations", **settings, "exclude": list(settings["exclude"]),
                                          "calibration_images": len(x), "source": path.name,
                                          "seconds": round(time.perf_counter() - t0, 1)})
    card.pop("dtype", None)
    ckpt.atomic_write_json(out.with_name(out.name + ".json"), card)
    log(f"int8 model: {out} ({len(x)} calibration images, {card['quantization']['seconds']} s)")
    table = measure_backends(path, data_dir, log)
    card["accuracy"] = {split: table["backends"]["int8"][split] for split in ("val", "test")
                        if table["backends"]["int8"][split]}
    ckpt.atomic_write_json(out.with_name(out.name + ".json"), card)
    return out, table


def calibration_batches(model: Model, images: np.ndarray, batch: int = 50) -> list[np.ndarray]:
    """uint8 images as the network's input: normalised and resized as Model.logits feeds them."""
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
        ckpt.atomic_write_bytes(out, tmp_out.read_bytes())


def measure_backends(path: Path, data_dir: str | None, log=print, batch: int = 100, rounds: int = 3) -> dict:
    """Validation top-1 (what `auto` chooses on), test top-1 (reported beside it, never chosen on) and
    images/s at `batch` of every backend available here; the choice `auto` makes. The speeds are medians of
    `rounds` rounds with the backends interleaved in each, so a machine that slows down for a while (another
    job, a noisy neighbour) slows every backend alike: one pass each once made OpenVINO int8 798 img/s
    against ONNX Runtime int8's 1,020, where a minute later side by side they ran 1,290 and 906."""
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
    table = {"cpu": ckpt.device_name(torch.device("cpu")), "torch": torch.__version__, "batch": batch,
             "rounds": rounds, "tolerance": TOLERANCE, "chosen_on": "val", "backends": rows, "auto": auto}
    ckpt.atomic_write_json(cached(path, "backends"), table)
    if rows["torch"]["val"]:
        log(f"auto: {auto} (the fastest within {TOLERANCE:.1%} of torch fp32's validation top-1 on this CPU)")
    else:
        log("auto: torch (the model kept no validation split to choose another backend on; the test set is "
            "never chosen on)")
    return table


def accuracy(model: Model, split: str, data_dir: str | None) -> dict | None:
    """top-1, top-5, superclass and n of a backend on a split; None for the validation split of a model that
    trained on every training image."""
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
