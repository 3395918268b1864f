"""Export any model source (a run, a checkpoint, the shipped weights, an exported safetensors file) for
use outside this package: weights as safetensors or the network as ONNX, each with a JSON sidecar, the
model card (class names, superclass map, normalisation, architecture, input size, how it was trained and
how accurate it measured). Both load back: `c100.load(FILE)`, `c100 predict --weights FILE`."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from c100 import UserError, checkpoint
from c100.inference import OnnxSession, load, sidecar_path

FORMATS = ("safetensors", "onnx")


def default_out(source: str | Path, model_path: Path, arch: str, fmt: str) -> Path:
    """Next to a run's checkpoint as ARCH-WHICH.FORMAT; beside an exported file under its own name; the
    shipped weights into the current folder."""
    if str(source) == "default":
        return Path(f"{arch}-default.{fmt}")
    if model_path.suffix in (".safetensors", ".onnx"):
        return model_path.with_suffix(f".{fmt}")
    return model_path.parent / f"{arch}-{model_path.stem}.{fmt}"


def export(source: str | Path, fmt: str, checkpoint_name: str = "last", out: str | Path | None = None,
           half: bool = False) -> tuple[Path, Path]:
    """Write `source` as `fmt` (safetensors: fp16 with `half`) and its sidecar; returns both paths."""
    if fmt not in FORMATS:
        raise UserError(f"--format '{fmt}' is not one of: {', '.join(FORMATS)}")
    model = load(source, checkpoint_name, device="cpu", backend="torch")
    if model.module is None:
        raise UserError(f"{model.source} is already an ONNX network (no torch weights to export); export from "
                        f"its run folder or its .safetensors file")
    path = Path(out) if out else default_out(source, model.source, model.arch, fmt)
    if path.resolve() == model.source.resolve():
        raise UserError(f"exporting {model.source} would overwrite it; pass another --out")
    card = dict(model.card)
    module = model.module.to(memory_format=torch.contiguous_format).eval()
    if fmt == "safetensors":
        from safetensors.torch import save

        dtype = torch.float16 if half else torch.float32
        tensors = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous()
                   for k, v in module.state_dict().items()}
        checkpoint.atomic_write_bytes(path, save(tensors, metadata={"arch": model.arch}))
        card["dtype"] = str(dtype).replace("torch.", "")
        card.pop("onnx", None)
    else:
        card.pop("dtype", None)
        card["onnx"] = export_onnx(module, path, model.input_size)
    checkpoint.atomic_write_json(sidecar_path(path), card)
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
    got = OnnxSession(path)(batch).numpy()
    return {"opset": 17, "dynamic_batch": True, "check_batch": 64,
            "max_abs_logit_diff": float(np.abs(got - ref).max()),
            "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean())}
