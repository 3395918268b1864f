"""Predict labels for image files: any image Pillow reads becomes the 32x32 RGB input the model was
trained on (EXIF rotation applied, alpha composited on white, 16-bit and palette images converted,
centre square cropped, then downscaled with an antialiasing filter)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from c100 import UserError

if TYPE_CHECKING:
    from c100.inference import Model

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
    return square_array(img, size)


def square_array(img, size: int = 32) -> np.ndarray:
    """An RGB Pillow image -> its centre square, downscaled (antialiased) to 3 x size x size uint8.
    Centre square: CIFAR images are square, and stretching would distort objects."""
    from PIL import Image

    img = to_rgb(img)
    side = min(img.size)
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


def predict_files(model: Model, files: list[Path], top_k: int = 5, batch_size: int = 256) -> list[Result]:
    """Top-k labels for each file, batch by batch; a file that cannot be read gets its one-line error and
    the others are still classified."""
    results = []
    for i in range(0, len(files), batch_size):
        batch, arrays, ok = read_files(files[i:i + batch_size], Result)
        results += batch
        if arrays:
            for r, top in zip(ok, model.predict(np.stack(arrays), top_k), strict=True):
                r.top = top
    return results


def read_files(files: list[Path], result) -> tuple[list, list[np.ndarray], list]:
    """Each file decoded with load_image, beside a `result(name)` for each (one with an `error` field): a
    file that cannot be read gets its one-line reason there. Returns every result, the images read and
    the results that go with them."""
    results, arrays, ok = [], [], []
    for f in files:
        r = result(str(f))
        try:
            arrays.append(load_image(f))
            ok.append(r)
        except ValueError as e:
            r.error = str(e)
        results.append(r)
    return results, arrays, ok


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
