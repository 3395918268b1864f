"""Predict labels for image files: any image Pillow reads becomes the 32x32 RGB input the model was
trained on (EXIF rotation applied, alpha composited on white, 16-bit and palette images converted,
centre square cropped, then downscaled with an antialiasing filter)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from c100 import UserError, checkpoint
from c100.augment import Normalize, at_size, resize
from c100.config import from_dict
from c100.device import select_device
from c100.evaluate import load_model, predict_logits, resolve_checkpoint
from c100.models.fold import fold_batchnorm

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm"}
MAX_PIXELS = 64_000_000  # larger images are refused before decoding (a 64-megapixel photo is plenty)


@dataclass
class Result:
    file: str
    top: list[dict] = field(default_factory=list)  # [{"label", "superclass", "prob"}], best first
    error: str | None = None


def to_rgb(img):
    """Any Pillow mode -> 8-bit RGB. Alpha is composited on white; 16/32-bit gray is rescaled."""
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "RGB" and "transparency" in img.info):
        img = img.convert("RGBA")
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    return img.convert("RGB")


def load_image(path: Path, size: int = 32) -> np.ndarray:
    """Read one file into a 3 x size x size uint8 array, or raise ValueError with a one-line reason."""
    if not path.is_file():
        raise ValueError("no such file")
    if path.stat().st_size == 0:
        raise ValueError("empty file")
    return decode_image(path, size)


def decode_image(source: Path | BinaryIO, size: int = 32) -> np.ndarray:
    """load_image for a path or an open binary stream (an upload)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise ValueError(f"image too large: {w}x{h} pixels is over the "
                                     f"{MAX_PIXELS // 1_000_000}-megapixel limit; downscale it first")
                img.draft("RGB", (size * 4, size * 4))  # JPEG: decode at a reduced scale, much faster
                img = ImageOps.exif_transpose(img)
                img = to_rgb(img)
    except UnidentifiedImageError:
        raise ValueError("not an image Pillow can read (wrong extension or not an image file)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValueError(f"image too large: over Pillow's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS} "
                         f"pixels; downscale it first") from None
    except (OSError, SyntaxError) as e:
        raise ValueError(f"truncated or corrupt image ({str(e).splitlines()[0][:80]})") from None
    side = min(img.size)  # centre square: CIFAR images are square, and stretching would distort objects
    left, top = (img.width - side) // 2, (img.height - side) // 2
    img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()


def expand_inputs(inputs: list[str], recursive: bool = False) -> list[Path]:
    """Files as given; folders expanded to the image files inside them (sorted)."""
    files = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in (p.rglob("*") if recursive else p.iterdir())
                           if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UserError(f"folder {p} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
            files += found
        else:
            files.append(p)
    return files


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.require(a, requirements="W"))  # copies read-only arrays (e.g. from Pillow)


class Predictor:
    """Top-k labels from uint8 images, whatever runs the network (a checkpoint, safetensors, ONNX)."""

    def __init__(self, logits_fn, classes: list[str], superclasses: list[str], fine_to_coarse: list[int]):
        self.logits = logits_fn  # uint8 N x 3 x 32 x 32 numpy -> float logits torch tensor
        self.classes, self.superclasses, self.fine_to_coarse = classes, superclasses, fine_to_coarse

    @classmethod
    def from_checkpoint(cls, source: str | Path, device: str = "cpu", which: str = "last") -> Predictor:
        ck = resolve_checkpoint(source, which)
        state = checkpoint.load(ck)
        dev = select_device(device)
        cfg = from_dict(state["config"])
        model = at_size(load_model(state, str(ck), dev, fold=True), cfg.eval_size())
        norm = Normalize(cfg.normalize, dev)
        return cls(lambda a: predict_logits(model, _tensor(a), norm), state["classes"],
                   state["superclasses"], state["fine_to_coarse"])

    @classmethod
    def from_export(cls, path: str | Path, device: str = "cpu") -> Predictor:
        from c100.export import OnnxModel, input_size, load_safetensors, load_sidecar

        path = Path(path)
        if not path.is_file():
            raise UserError(f"weights file {path} not found; pass a .safetensors or .onnx file from `c100 export`")
        meta = load_sidecar(path)
        dev = torch.device("cpu") if path.suffix == ".onnx" else select_device(device)  # onnxruntime: CPU
        norm, size = Normalize(meta["normalize"]["kind"], dev), input_size(meta)
        if path.suffix == ".onnx":
            net = OnnxModel(path)

            def run(a: np.ndarray) -> torch.Tensor:
                return torch.from_numpy(net(resize(norm(_tensor(a)), size).numpy()))
        else:
            model = at_size(fold_batchnorm(load_safetensors(path, meta).to(dev)), size)

            def run(a: np.ndarray) -> torch.Tensor:
                return predict_logits(model, _tensor(a), norm)
        return cls(run, meta["classes"], meta["superclasses"], meta["fine_to_coarse"])

    def predict(self, files: list[Path], top_k: int = 5, batch_size: int = 256) -> list[Result]:
        results = []
        for i in range(0, len(files), batch_size):
            chunk, arrays, ok = files[i:i + batch_size], [], []
            for f in chunk:
                r = Result(str(f))
                try:
                    arrays.append(load_image(f))
                    ok.append(r)
                except ValueError as e:
                    r.error = str(e)
                results.append(r)
            if arrays:
                for r, top in zip(ok, self.top(np.stack(arrays), top_k), strict=True):
                    r.top = top
        return results

    def top(self, images: np.ndarray, k: int = 5) -> list[list[dict]]:
        """For each uint8 image, the k most probable classes: label, superclass, probability."""
        probs = self.logits(images).float().softmax(1)
        p, idx = probs.topk(min(k, probs.shape[1]), 1)
        return [[{"label": self.classes[c], "superclass": self.superclasses[self.fine_to_coarse[c]],
                  "prob": round(q, 4)} for q, c in zip(pr, ix, strict=True)]
                for pr, ix in zip(p.tolist(), idx.tolist(), strict=True)]


def format_results(results: list[Result]) -> str:
    width = min(max((len(r.file) for r in results), default=4), 48)
    lines = [f"{'file':<{width}}  {'prediction':<16} {'prob':>6}  {'superclass':<32} others"]
    for r in results:
        name = r.file if len(r.file) <= width else "..." + r.file[-(width - 3):]
        if r.error:
            lines.append(f"{name:<{width}}  error: {r.error}")
            continue
        best, rest = r.top[0], r.top[1:]
        others = ", ".join(f"{t['label']} {t['prob']:.0%}" for t in rest)
        lines.append(f"{name:<{width}}  {best['label']:<16} {best['prob']:>6.1%}  {best['superclass']:<32} {others}")
    return "\n".join(lines)
