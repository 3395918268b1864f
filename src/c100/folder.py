"""A labelled folder of your own images: DIR/CLASS_NAME/*.jpg, one sub-folder per CIFAR-100 fine class,
read into the same arrays as a CIFAR split so that `evaluate`, `analyze` and `mosaic` measure it as they
measure the test set. Each file is decoded as `c100 predict` decodes it (images.load_image: any format
Pillow reads, centre square, downscaled to 32 x 32); a file that cannot be read is reported and left out,
never fatal."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from c100 import UserError
from c100.data import Meta, Split
from c100.images import IMAGE_SUFFIXES, load_image


@dataclass
class Folder:
    split: Split  # the readable images and their labels
    skipped: list[dict] = field(default_factory=list)  # [{"file", "error"}]: files that could not be used


def folder_key(name: str) -> str:
    """A folder name as a class name: 'Maple Tree' and 'maple-tree' both name maple_tree."""
    return name.strip().lower().replace(" ", "_").replace("-", "_")


def class_folders(root: Path, classes: list[str]) -> dict[Path, int]:
    """Each sub-folder of `root` and the class it names; unknown names are one error naming them all."""
    if not root.is_dir():
        raise UserError(f"--images {root}: not a folder; pass a folder with one sub-folder per class name")
    index = {folder_key(c): i for i, c in enumerate(classes)}
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [p.name for p in folders if folder_key(p.name) not in index]
    if unknown:
        def hint(name: str) -> str:
            close = difflib.get_close_matches(folder_key(name), list(index), n=1)
            return f"'{name}'" + (f" (did you mean {close[0]}?)" if close else "")

        raise UserError(f"--images {root}: {len(unknown)} sub-folder(s) not named after a class of the model: "
                        f"{', '.join(hint(n) for n in unknown)}; the {len(classes)} class names are: "
                        f"{', '.join(classes)}")
    if not folders:
        raise UserError(f"--images {root} has no sub-folders: put each image in a sub-folder named after its class "
                        f"(e.g. {root}/{classes[0]}/photo.jpg)")
    return {p: index[folder_key(p.name)] for p in folders}


def image_files(folder: Path) -> list[Path]:
    """The image files in a class folder and below it (as `c100 predict -r` finds them), sorted."""
    return sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                  and not f.name.startswith("."))


def read_folder(root: str | Path, meta: Meta) -> Folder:
    """The images of a labelled folder as a Split (labels by sub-folder name; superclass from `meta`) and
    the files that could not be read, each with its one-line reason."""
    root = Path(root)
    arrays, fine, skipped = [], [], []
    for folder, label in class_folders(root, meta.fine_names).items():
        for f in image_files(folder):
            try:
                arrays.append(load_image(f))
                fine.append(label)
            except ValueError as e:
                skipped.append({"file": str(f), "error": str(e)})
    if not arrays:
        why = f" ({len(skipped)} could not be read)" if skipped else ""
        raise UserError(f"--images {root}: no readable image in its class folders{why}; image files end in "
                        f"{', '.join(sorted(IMAGE_SUFFIXES))}")
    labels = np.asarray(fine, dtype=np.int64)
    coarse = np.asarray(meta.fine_to_coarse, dtype=np.int64)[labels]
    return Folder(Split(np.stack(arrays), labels, coarse), skipped)
