"""`c100 predict`: labels for image files and folders of them, batch by batch, with a one-line error for each
file that cannot be read (decoding: images.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from c100 import UserError
from c100.images import IMAGE_SUFFIXES, load_image
from c100.inference import Model


@dataclass
class Result:
    file: str
    top: list[dict] = field(default_factory=list)  # [{"label", "superclass", "prob"}], best first
    error: str | None = None


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


def predict_files(model: Model, files: list[Path], top_k: int = 5, chunk_size: int = 256) -> list[Result]:
    """Top-k labels for each file, batch by batch; a file that cannot be read gets its one-line error and
    the others are still classified."""
    results = []
    for i in range(0, len(files), chunk_size):
        batch, arrays, ok = read_files(files[i:i + chunk_size], Result)
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
