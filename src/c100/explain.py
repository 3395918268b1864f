"""Pictures of why the model answered: each image beside its Grad-CAM heat maps (Model.explain), one per
class explained, captioned with the label and its probability. `c100 explain` writes one PNG per image
file; the web demo and `c100 report` draw the same overlay."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from c100.analysis import confident_mistakes
from c100.mosaic import INK, PAPER, font, pretty, save_png
from c100.predict import read_files

ALPHA = 0.5  # the heat map's share of each overlay pixel: the image stays readable beneath it


@dataclass
class Explained:
    file: str
    picture: str | None = None  # the PNG written
    top: list[dict] = field(default_factory=list)  # [{"label", "superclass", "prob"}], best first
    error: str | None = None


def overlay(image: np.ndarray, heat: np.ndarray, scale: int = 6) -> Image.Image:
    """A 3 x 32 x 32 uint8 image under its 32 x 32 heat map (0..1, 'jet': red where the evidence is),
    both enlarged `scale` times: the image pixel by pixel (what the model saw), the map smoothly."""
    import matplotlib

    base = enlarged(image, scale)
    smooth = Image.fromarray(np.asarray(heat, np.float32)).resize(base.size, Image.Resampling.BILINEAR)
    color = matplotlib.colormaps["jet"](np.clip(np.asarray(smooth), 0, 1))[..., :3]
    mixed = (1 - ALPHA) * np.asarray(base, np.float32) + ALPHA * 255 * color
    return Image.fromarray(np.clip(mixed + 0.5, 0, 255).astype(np.uint8))


def enlarged(image: np.ndarray, scale: int) -> Image.Image:
    """A 3 x 32 x 32 uint8 image enlarged pixel by pixel: the 32 x 32 pixels the model saw."""
    return Image.fromarray(image.transpose(1, 2, 0)).resize((32 * scale, 32 * scale), Image.Resampling.NEAREST)


def explained_tile(image: np.ndarray, answer: dict, scale: int, prefix: str = "") -> tuple[Image.Image, str]:
    """The overlay of one answer of Model.explain and its caption: 'PREFIX label 83%'."""
    return overlay(image, answer["map"], scale), f"{prefix}{pretty(answer['label'])} {answer['prob']:.0%}"


def captioned(tiles: list[tuple[Image.Image, str]], title: str = "") -> Image.Image:
    """Tiles side by side, each with its caption below, under an optional title line."""
    f, pad = font(13), 6
    w, h = tiles[0][0].size
    top = 24 if title else pad
    img = Image.new("RGB", (pad + len(tiles) * (w + pad), top + h + 24), PAPER)
    d = ImageDraw.Draw(img)
    if title:
        d.text((pad, 5), title, fill=INK, font=f)
    for k, (tile, caption) in enumerate(tiles):
        x = pad + k * (w + pad)
        img.paste(tile, (x, top))
        while f.getlength(caption) > w and len(caption) > 4:
            caption = caption[:-2] + "…"
        d.text((x + (w - f.getlength(caption)) / 2, top + h + 4), caption, fill=INK, font=f)
    return img


def explanation_picture(image: np.ndarray, answers: list[dict], title: str = "", scale: int = 6) -> Image.Image:
    """The image as the model saw it, then one overlay per answer of Model.explain, captioned."""
    tiles = [(enlarged(image, scale), "the image (32 x 32)")] + [explained_tile(image, a, scale) for a in answers]
    return captioned(tiles, title)


def png_data_uri(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def explain_files(model, files: list[Path], out_dir: Path, k: int = 3, layer: str | None = None) -> list[Explained]:
    """One PNG per image file in `out_dir` (NAME-explain.png): the image and a heat map for each of its top-k
    classes. A file that cannot be read gets its one-line error and the others are still explained."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results, arrays, ok = read_files(files, Explained)
    if not arrays:
        return results
    answers = model.explain(np.stack(arrays), k, layer=layer)
    taken: set[str] = set()
    for r, image, top in zip(ok, arrays, answers, strict=True):
        name = unique_name(Path(r.file).stem, taken)
        title = f"{Path(r.file).name}: where the model found each class (Grad-CAM)"
        r.picture = str(save_png(explanation_picture(image, top, title), out_dir / f"{name}-explain.png"))
        r.top = [{key: a[key] for key in ("label", "superclass", "prob")} for a in top]
    return results


def unique_name(stem: str, taken: set[str]) -> str:
    """`stem`, or stem-2, stem-3... when two inputs share a name (a/cat.jpg and b/cat.png)."""
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}"
    taken.add(name)
    return name


def mistakes_picture(model, p, n: int = 6, scale: int = 4) -> Image.Image:
    """The n most confident mistakes of predictions `p` (evaluate.Predictions of `model`), one row each: the
    image, the heat map of the class the model said and the map of the class it is."""
    idx = confident_mistakes(p, n)
    if not len(idx):
        return captioned([(Image.new("RGB", (32 * scale, 32 * scale), PAPER), "no mistakes")])
    images = p.split.images[idx]
    said = p.probs[idx].argmax(1).numpy()
    answers = model.explain(images, targets=np.stack([said, p.split.fine[idx]], 1))
    rows = []
    for image, (wrong, right) in zip(images, answers, strict=True):
        rows.append(captioned([(enlarged(image, scale), "the image"), explained_tile(image, wrong, scale, "said "),
                               explained_tile(image, right, scale, "is ")]))
    return stack(rows, "Where the model looked in its most confident mistakes (Grad-CAM): for what it said, and for "
                       "the true class")


def stack(pictures: list[Image.Image], title: str, cols: int = 2) -> Image.Image:
    """Pictures of one size in a grid of `cols` columns, under a title line."""
    w, h = pictures[0].size
    rows = -(-len(pictures) // cols)
    img = Image.new("RGB", (cols * w, 26 + rows * h), PAPER)
    ImageDraw.Draw(img).text((6, 6), title, fill=INK, font=font(14))
    for k, pic in enumerate(pictures):
        img.paste(pic, ((k % cols) * w, 26 + (k // cols) * h))
    return img
