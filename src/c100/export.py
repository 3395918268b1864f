"""Export a trained run for use outside this package: weights as safetensors or the network as ONNX,
each with a JSON sidecar (class names, superclass map, normalisation, architecture, input size, how it
was trained and how accurate it measured). Both load back: `c100 predict --weights FILE`."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from c100 import UserError, checkpoint
from c100.config import from_dict
from c100.data import MEAN, STD
from c100.evaluate import load_model, resolve_checkpoint
from c100.models import create_model
from c100.models.fold import fold_batchnorm

FORMATS = ("safetensors", "onnx")


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def input_size(meta: dict) -> int:
    """The pixel size an exported network takes, as its sidecar declares it (32 when it says nothing)."""
    return int(meta.get("input", {}).get("shape", [3, 32, 32])[-1])


def describe(state: dict, ck: Path) -> dict:
    cfg = state["config"]
    size = from_dict(cfg).eval_size()
    resized = f", then resized to {size}x{size} (bilinear, antialiased)" if size != 32 else ""
    evals = {}
    for f in sorted(ck.parent.glob(f"eval-*-{ck.stem}.json")):
        r = json.loads(f.read_text())
        evals[r["split"]] = {k: r[k] for k in ("top1", "top5", "superclass", "n") if k in r}
    env_file = ck.parent / "env.json"
    return {
        "format": "c100-export-1",
        "arch": state["arch"],
        "num_classes": len(state["classes"]),
        "input": {"shape": [3, size, size], "layout": "NCHW", "dtype": "float32",
                  "pixels": ("RGB scaled to [0, 1], then (x - mean) / std" if cfg["normalize"] == "cifar100"
                             else "RGB scaled to [0, 1]") + resized},
        "normalize": {"kind": cfg["normalize"], "mean": list(MEAN) if cfg["normalize"] == "cifar100" else [0, 0, 0],
                      "std": list(STD) if cfg["normalize"] == "cifar100" else [1, 1, 1]},
        "classes": state["classes"],
        "superclasses": state["superclasses"],
        "fine_to_coarse": state["fine_to_coarse"],
        "weights": "ema" if state.get("ema") is not None else "model",
        "trained": {"epochs": state["epoch"], "config": cfg,
                    "environment": json.loads(env_file.read_text()) if env_file.is_file() else None},
        "accuracy": evals,  # what `c100 evaluate` measured on this checkpoint, by split
    }


def export_run(run: str | Path, fmt: str, which: str = "last", out: str | Path | None = None,
               half: bool = False) -> tuple[Path, Path]:
    if fmt not in FORMATS:
        raise UserError(f"--format '{fmt}' is not one of: {', '.join(FORMATS)}")
    ck = resolve_checkpoint(run, which)
    state = checkpoint.load(ck)
    model = load_model(state, str(ck), torch.device("cpu"))
    path = Path(out) if out else ck.parent / f"{state['arch']}-{ck.stem}.{fmt}"
    meta = describe(state, ck)
    if fmt == "safetensors":
        from safetensors.torch import save

        dtype = torch.float16 if half else torch.float32
        tensors = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous()
                   for k, v in model.state_dict().items()}
        checkpoint.atomic_write_bytes(path, save(tensors, metadata={"arch": state["arch"]}))
        meta["dtype"] = str(dtype).replace("torch.", "")
    else:
        meta["onnx"] = export_onnx(model, path, input_size(meta))
    checkpoint.atomic_write_json(sidecar_path(path), meta)
    return path, sidecar_path(path)


def export_onnx(model: nn.Module, path: Path, size: int = 32) -> dict:
    """Trace to ONNX for size x size inputs with a dynamic batch axis, then check it against PyTorch with
    onnxruntime. The resize to `size` stays outside the graph, like the normalisation (opset 17 has no
    antialiased resize)."""
    import io

    x = torch.randn(2, 3, size, size)
    buf = io.BytesIO()
    try:
        # The TorchScript exporter: it needs only `onnx` and works from torch 2.4 to 2.13 alike; the newer
        # torch.export one also needs onnxscript and takes ~10x longer on ResNet18 here. It warns that it
        # is deprecated; the warning says nothing to a user.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, (x,), buf, input_names=["images"], output_names=["logits"], opset_version=17,
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    except ImportError as e:
        raise UserError(f"ONNX export needs the onnx package ({e}); pip install 'c100[export]'") from None
    checkpoint.atomic_write_bytes(path, buf.getvalue())
    check = torch.Generator().manual_seed(0)
    batch = torch.randn(64, 3, size, size, generator=check)
    with torch.no_grad():
        ref = model(batch).numpy()
    got = OnnxModel(path)(batch.numpy())
    return {"opset": 17, "dynamic_batch": True, "check_batch": 64,
            "max_abs_logit_diff": float(np.abs(got - ref).max()),
            "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean())}


class OnnxModel:
    """An exported ONNX network run by onnxruntime: normalised float32 NCHW in, logits out."""

    def __init__(self, path: Path):
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("running ONNX needs onnxruntime; pip install 'c100[export]'") from None
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise UserError(f"{path} is not a loadable ONNX model ({str(e).splitlines()[0][:100]})") from None
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: np.ascontiguousarray(x, dtype=np.float32)})[0]


def load_sidecar(path: Path) -> dict:
    side = sidecar_path(path)
    if not side.is_file():
        raise UserError(f"{side} not found: an exported model needs its JSON sidecar next to it "
                        f"(written by `c100 export`)")
    try:
        meta = json.loads(side.read_text())
        assert meta.get("format") == "c100-export-1"
        return meta
    except (json.JSONDecodeError, AssertionError):
        raise UserError(f"{side} is not a c100 export sidecar; export the model again") from None


def load_safetensors(path: Path, meta: dict) -> nn.Module:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path} is not a readable safetensors file ({e}); export it again") from None
    model = create_model(meta["arch"], meta["num_classes"])
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    checkpoint.load_weights(model, tensors, str(path), meta["arch"])
    return model.eval()


def packaged_weights() -> Path:
    """The ResNet18 weights shipped inside the package (see weights/PROVENANCE.md)."""
    from importlib import resources

    return Path(str(resources.files("c100") / "weights" / "resnet18-default.safetensors"))


def resolve_weights(name: str | Path) -> Path:
    if str(name) == "default":
        path = packaged_weights()
        if not path.is_file():
            raise UserError("this installation carries no default weights; pass --weights FILE or --checkpoint RUN")
        return path
    return Path(name)


def evaluate_weights(name: str | Path, split: str = "test", tta: bool = False, data_dir: str | None = None,
                     device: str = "auto") -> dict:
    """Re-measure an exported safetensors model on the test set (or its training run's validation split)."""
    from c100.augment import Normalize, at_size
    from c100.device import select_device
    from c100.evaluate import load_eval_split, measure

    path = resolve_weights(name)
    if path.suffix != ".safetensors":
        raise UserError(f"evaluate --weights takes a .safetensors file, not {path.name}")
    meta = load_sidecar(path)
    cfg = from_dict(meta["trained"]["config"])
    cfg.data_dir = data_dir or os.environ.get("CIFAR100_DATA", "./data")
    dev = select_device(device)
    model = load_safetensors(path, meta).to(dev)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    images, data_meta = load_eval_split(cfg, split)
    size = input_size(meta)
    head = {"checkpoint": str(path), "epoch": meta["trained"]["epochs"], "split": split, "arch": meta["arch"],
            "weights": f"exported ({meta.get('dtype', '?')})", "eval_size": size}
    # as `c100 evaluate RUN` measures: BN folded, the run's evaluation size, batch and memory layout
    net, norm = at_size(fold_batchnorm(model), size), Normalize(meta["normalize"]["kind"], dev)
    result, _ = measure(net, norm, images, data_meta, tta, head, cfg.eval_batch_size, cfg.channels_last)
    result["recorded"] = meta["accuracy"].get(split)
    return result
