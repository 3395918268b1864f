"""Images in, whatever their form: any file Pillow reads, an upload's bytes, a PIL image or an array
becomes the uint8 3 x 32 x 32 RGB input the model was trained on (EXIF rotation applied, alpha
composited on white, 16-bit and palette images converted, centre square cropped, then downscaled with an
antialiasing filter). `c100 predict`, `--images DIR`, the web demo and `Model.predict` all decode here."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from c100 import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm"}
MAX_PIXELS = 64_000_000  # larger images are refused before decoding (a 64-megapixel photo is plenty)


def to_rgb(img):
    """Any Pillow mode -> 8-bit RGB. Alpha is composited on white; 16/32-bit gray is rescaled."""
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
    img = to_rgb(img)
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()


# -- a batch from anything Model.predict takes -----------------------------------------------------


def is_single(images) -> bool:
    """One image (a path, a PIL image, one 3-d array), whose answers are a list, not a list of lists."""
    if isinstance(images, (str, Path, Image.Image)):
        return True
    return isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 3


def as_item(item) -> torch.Tensor:
    """One entry of a list given to as_batch, as a 1 x 3 x 32 x 32 (or N x ...) uint8 batch."""
    if isinstance(item, (np.ndarray, torch.Tensor)):
        return as_batch(item)
    if not isinstance(item, (str, Path, Image.Image)):
        raise UserError(f"cannot classify a {type(item).__name__} in a list: pass uint8 arrays, PIL images or "
                        f"file paths")
    try:
        return torch.from_numpy(load_image(Path(item)) if isinstance(item, (str, Path)) else square_array(item))[None]
    except ValueError as e:
        raise UserError(f"{item}: {e}") from None


def as_batch(images) -> torch.Tensor:
    """uint8 N x 3 x 32 x 32 from: a uint8 array or tensor (N x 3 x 32 x 32, N x 32 x 32 x 3, or one
    image without N), a path, a PIL image, or a list of any of them (paths and PIL images of any size:
    centre square, downscaled as `c100 predict` does)."""
    if isinstance(images, (str, Path, Image.Image)):
        images = [images]
    if isinstance(images, (list, tuple)):
        parts = [as_item(item) for item in images]  # each item as it would be alone, in its own layout
        return torch.cat(parts) if parts else torch.zeros(0, 3, 32, 32, dtype=torch.uint8)
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.require(images, requirements="W"))  # copies read-only arrays
    if not isinstance(images, torch.Tensor):
        raise UserError(f"cannot classify a {type(images).__name__}: pass uint8 arrays, PIL images or file paths")
    if images.ndim == 3:
        images = images[None]
    if images.ndim == 4 and images.shape[1] != 3 and images.shape[-1] == 3:
        images = images.permute(0, 3, 1, 2)  # N x H x W x 3, as Pillow and matplotlib hold images
    if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != (3, 32, 32):
        raise UserError(f"arrays must be uint8 CIFAR images, N x 3 x 32 x 32 (or N x 32 x 32 x 3), got "
                        f"{images.dtype} {tuple(images.shape)}; pass file paths or PIL images for other sizes")
    return images
