"""The picture of the test images grouped by predicted class (the homework's test_visualisation.png):
one row per fine class, labelled with its name and superclass; each image drawn in the row of the
class the model *predicted*, framed green when right and red when wrong."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from c100 import UserError
from c100.checkpoint import atomic_write_bytes
from c100.evaluate import Predictions

GREEN, RED, INK, PAPER, GRID = (22, 163, 74), (220, 38, 38), (17, 24, 39), (255, 255, 255), (229, 231, 235)


def font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)  # Pillow's bundled font: present on every machine


def pretty(name: str) -> str:
    return name.replace("_", " ")  # 'large_man-made_outdoor_things' reads better with spaces


def parse_classes(spec: str | None, names: list[str]) -> list[int]:
    """'apple,bus' or '0-9,42' -> class indices, in the order given."""
    if not spec:
        return list(range(len(names)))
    out = []
    for part in spec.split(","):
        part = part.strip()
        if part in names:
            out.append(names.index(part))
        elif part.replace("-", "").isdigit():
            lo, _, hi = part.partition("-")
            out += list(range(int(lo), int(hi or lo) + 1))
        else:
            raise UserError(f"--classes: '{part}' is neither a class name nor an index range like 0-9")
    if any(not 0 <= c < len(names) for c in out):
        raise UserError(f"--classes: indices must be in 0..{len(names) - 1}")
    return out


def draw_mosaic(p: Predictions, classes: list[int], per_row: int = 24, scale: int = 2, seed: int = 0) -> Image.Image:
    probs = p.probs
    pred = probs.argmax(1).numpy()
    conf = probs.max(1).values.numpy()
    y = p.split.fine
    names, supers, f2c = p.meta.fine_names, p.meta.coarse_names, p.meta.fine_to_coarse
    cell, border = 32 * scale, max(2, scale + 1)
    tile = cell + 2 * border
    gap = 2
    fsize = max(11, 7 * scale)
    big, small = font(fsize + 2), font(fsize)
    label_w = max([int(big.getlength(pretty(names[c]))) for c in classes]
                  + [int(small.getlength(pretty(supers[f2c[c]]))) for c in classes]
                  + [int(small.getlength("1000 right of 1000")), 150]) + 16
    row_h = max(tile, 3 * fsize + 12) + gap
    header = 2 * fsize + 24
    width = label_w + per_row * (tile + gap) + 8
    img = Image.new("RGB", (width, header + row_h * len(classes) + 4), PAPER)
    d = ImageDraw.Draw(img)
    acc = (pred == y).mean()
    where = p.result.get("images") or p.result.get("split", "test")  # a labelled folder, or a split
    d.text((8, 6), f"{where} images grouped by predicted class: {len(y)} images, "
                   f"top-1 {acc:.2%}. Frame: green = right, red = wrong. Up to {per_row} per row (a seeded sample), "
                   f"most confident first.", fill=INK, font=small)
    rng = np.random.default_rng(seed)
    for r, c in enumerate(classes):
        top = header + r * row_h
        if r % 2:
            d.rectangle([0, top - gap // 2, width, top + row_h - gap // 2 - 1], fill=(249, 250, 251))
        idx = np.flatnonzero(pred == c)
        right = int((y[idx] == c).sum())
        d.text((8, top + 2), pretty(names[c]), fill=INK, font=big)
        d.text((8, top + fsize + 6), pretty(supers[f2c[c]]), fill=(75, 85, 99), font=small)
        d.text((8, top + 2 * fsize + 9), f"{right} right of {len(idx)}" if len(idx) else "never predicted",
               fill=(75, 85, 99), font=small)
        if len(idx) > per_row:  # a seeded sample keeps the right/wrong mix of the row honest
            idx = rng.choice(idx, per_row, replace=False)
        idx = idx[np.argsort(-conf[idx], kind="stable")]
        for k, i in enumerate(idx):
            x0 = label_w + k * (tile + gap)
            d.rectangle([x0, top, x0 + tile - 1, top + tile - 1], fill=GREEN if y[i] == c else RED)
            thumb = Image.fromarray(p.split.images[i].transpose(1, 2, 0)).resize((cell, cell), Image.Resampling.NEAREST)
            img.paste(thumb, (x0 + border, top + border))
    d.line([label_w - 6, header - 4, label_w - 6, img.height], fill=GRID, width=1)
    return img


def save_png(img: Image.Image, path: Path) -> Path:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    atomic_write_bytes(path, buf.getvalue())
    return path
