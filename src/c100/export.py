"""Export any model source (a run, a checkpoint, the shipped weights, an exported safetensors file) for
use outside this package: weights as safetensors or the network as ONNX, each with a JSON sidecar, the
model card (class names, superclass map, normalisation, architecture, input size, how to run it, how it
was trained and how accurate it measured). Both load back: `c100.load(FILE)`, `c100 predict --weights FILE`."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save

from c100 import UserError
from c100 import checkpoint as ckpt
from c100.card import sidecar_path
from c100.inference import load
from c100.runtimes import write_onnx

FORMATS = ("safetensors", "onnx")


def default_out(source: str | Path, model_path: Path, arch: str, fmt: str) -> Path:
    """Next to a run's checkpoint as ARCH-WHICH.FORMAT; beside an exported file under its own name; the
    shipped weights into the current folder."""
    if str(source) == "default":
        return Path(f"{arch}-default.{fmt}")
    if model_path.suffix in (".safetensors", ".onnx"):
        return model_path.with_suffix(f".{fmt}")
    return model_path.parent / f"{arch}-{model_path.stem}.{fmt}"


def export(source: str | Path, fmt: str, checkpoint: str = "last", out: str | Path | None = None,
           half: bool = False) -> tuple[Path, Path]:
    """Write `source` (a run's `checkpoint`: last or best) as `fmt` (safetensors: fp16 with `half`) and its
    sidecar; returns both paths."""
    if fmt not in FORMATS:
        raise UserError(f"--format '{fmt}' is not one of: {', '.join(FORMATS)}")
    model = load(source, checkpoint, device="cpu", backend="torch")
    if model.module is None:
        raise UserError(f"{model.source} is already an ONNX network (no torch weights to export); export from "
                        f"its run folder or its .safetensors file")
    path = Path(out) if out else default_out(source, model.source, model.arch, fmt)
    if path.resolve() == model.source.resolve():
        raise UserError(f"exporting {model.source} would overwrite it; pass another --out")
    if fmt == "onnx":
        return path, write_onnx(model.module, model.card, path)
    dtype = torch.float16 if half else torch.float32
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous()
               for k, v in model.module.to(memory_format=torch.contiguous_format).state_dict().items()}
    ckpt.atomic_write_bytes(path, save(tensors, metadata={"arch": model.arch}))
    card = dict(model.card, dtype=str(dtype).replace("torch.", ""))
    card.pop("onnx", None)
    ckpt.atomic_write_json(sidecar_path(path), card)
    return path, sidecar_path(path)
