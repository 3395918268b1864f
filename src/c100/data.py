"""CIFAR-100 on disk: find, download (md5 of the archive), verify and load the official python files.

Layout: DATA_DIR/cifar-100-python/{train,test,meta}, as the official archive unpacks. The files are
Python-2 pickles; they are read with a restricted unpickler that admits only the few numpy globals
CIFAR files contain, so a tampered file cannot run code.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from c100 import UserError

URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
ARCHIVE = "cifar-100-python.tar.gz"
ARCHIVE_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
FOLDER = "cifar-100-python"
SPLIT_COUNTS = {"train": 50_000, "test": 10_000}
NUM_FINE, NUM_COARSE = 100, 20
# Per-channel statistics of the CIFAR-100 training set (not CIFAR-10's, a common mix-up).
MEAN = (0.5071, 0.4865, 0.4409)
STD = (0.2673, 0.2564, 0.2762)


@dataclass
class Split:
    """One split as arrays: images N x 3 x 32 x 32 uint8, fine and coarse labels int64."""

    images: np.ndarray
    fine: np.ndarray
    coarse: np.ndarray

    def __len__(self) -> int:
        return len(self.fine)

    def subset(self, idx: np.ndarray) -> Split:
        return Split(self.images[idx], self.fine[idx], self.coarse[idx])


@dataclass
class Meta:
    fine_names: list[str]
    coarse_names: list[str]
    fine_to_coarse: list[int]  # fine class index -> its superclass index


def default_data_dir() -> str:
    """Where the data set is looked for (and downloaded to) unless --data-dir says otherwise: the one
    place that reads the CIFAR100_DATA environment variable."""
    return os.environ.get("CIFAR100_DATA", "./data")


# -- safe unpickling ------------------------------------------------------------------------------

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes bytes at protocol 2; turns a str into bytes only
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refers to {module}.{name}")
        if module == "numpy.core.multiarray":  # NumPy 2 moved it; the old path warns
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def safe_unpickle(path: Path) -> object:
    """Unpickle a CIFAR file, refusing any global other than the numpy array machinery."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}; check the path and permissions") from None
    try:
        return _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        if str(e).startswith("refers to"):
            raise UserError(
                f"{path} is not a CIFAR-100 file: it {e}, which could run code; "
                f"delete it and download the official archive again"
            ) from None
        raise UserError(f"{path} is corrupt or truncated ({e}); delete it and download it again") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise UserError(
            f"{path} is corrupt or truncated ({type(e).__name__}); delete it and download it again"
        ) from None


# -- validation -----------------------------------------------------------------------------------


def _require(cond: bool, path: Path, what: str) -> None:
    if not cond:
        raise UserError(f"{path} is not a valid CIFAR-100 file: {what}; delete it and download it again")


def _get(d: dict, key: str, path: Path):
    _require(isinstance(d, dict), path, "expected a dict at the top level")
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    _require(False, path, f"missing key '{key}'")


def parse_split(obj: object, path: Path, expected: int | None) -> Split:
    """Check a loaded train/test dict (keys, shapes, dtype, label ranges, count) and return arrays."""
    data = _get(obj, "data", path)
    fine = np.asarray(_get(obj, "fine_labels", path))
    coarse = np.asarray(_get(obj, "coarse_labels", path))
    _require(isinstance(data, np.ndarray), path, "'data' is not an array")
    _require(data.dtype == np.uint8, path, f"'data' has dtype {data.dtype}, expected uint8")
    _require(data.ndim == 2 and data.shape[1] == 3072, path, f"'data' has shape {data.shape}, expected N x 3072")
    n = data.shape[0]
    if expected is not None and n != expected:
        raise UserError(f"{path} holds {n} images, expected {expected}: a partial or wrong file (delete it and "
                        f"download it again), or a smaller data set of your own (pass --no-check-size)")
    _require(fine.shape == (n,) and coarse.shape == (n,), path, f"label counts differ from the {n} images")
    _require(np.issubdtype(fine.dtype, np.integer) and np.issubdtype(coarse.dtype, np.integer),
             path, "labels are not integers")
    _require(n > 0 and fine.min() >= 0 and fine.max() < NUM_FINE, path, "fine labels outside 0..99")
    _require(coarse.min() >= 0 and coarse.max() < NUM_COARSE, path, "coarse labels outside 0..19")
    images = data.reshape(n, 3, 32, 32)  # the files are channel-planar: R plane, G plane, B plane
    return Split(images, fine.astype(np.int64), coarse.astype(np.int64))


def parse_meta(obj: object, path: Path) -> list[list[str]]:
    names = []
    for key, count in (("fine_label_names", NUM_FINE), ("coarse_label_names", NUM_COARSE)):
        value = _get(obj, key, path)
        _require(isinstance(value, list) and len(value) == count, path, f"'{key}' should list {count} names")
        names.append([v.decode() if isinstance(v, bytes) else str(v) for v in value])
    return names


def fine_to_coarse_map(split: Split, path: Path) -> list[int]:
    """Each fine class belongs to exactly one superclass; read the map off the labels."""
    mapping = [-1] * NUM_FINE
    pairs = np.unique(np.stack([split.fine, split.coarse], 1), axis=0)
    for f, c in pairs:
        _require(mapping[f] in (-1, c), path, f"fine class {f} appears under two superclasses")
        mapping[f] = int(c)
    return mapping


# -- download -------------------------------------------------------------------------------------


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fetch(url: str, dest: Path) -> None:
    from tqdm import tqdm

    tmp = dest.with_suffix(".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            total = int(r.headers.get("Content-Length", 0)) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}") as bar:
                for block in iter(lambda: r.read(1 << 20), b""):
                    f.write(block)
                    bar.update(len(block))
        os.replace(tmp, dest)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(
            f"cannot download {url} ({getattr(e, 'reason', e)}); offline, put {ARCHIVE} or its unpacked "
            f"folder {FOLDER}/ (files train, test, meta) in {dest.parent}, or set --data-dir"
        ) from None


def download(root: Path, url: str = URL, md5: str = ARCHIVE_MD5) -> Path:
    """Fetch (unless present) and check the archive, then extract it atomically into root/FOLDER."""
    root.mkdir(parents=True, exist_ok=True)
    archive = root / ARCHIVE
    if not archive.exists():
        _fetch(url, archive)
    got = md5sum(archive)
    if got != md5:
        raise UserError(f"{archive} has md5 {got}, expected {md5}: a corrupt or wrong download; delete it "
                        f"and run again")
    # Extract next to the target, then rename: an interrupted extraction never looks complete.
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        src = tmp / FOLDER
        if not src.is_dir():
            raise UserError(f"{archive} does not contain {FOLDER}/; delete it and download it again")
        os.replace(src, root / FOLDER)
    except (tarfile.TarError, OSError) as e:
        raise UserError(f"cannot extract {archive} ({e}); delete it and download it again") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root / FOLDER


def find(data_dir: str | os.PathLike, download_ok: bool = True) -> Path:
    """Return the folder holding train/test/meta, downloading it when absent and allowed."""
    root = Path(data_dir).expanduser()
    for cand in (root / FOLDER, root):
        if all((cand / n).is_file() for n in ("train", "test", "meta")):
            return cand
    folder = root / FOLDER
    if folder.is_dir():
        missing = [n for n in ("train", "test", "meta") if not (folder / n).is_file()]
        raise UserError(f"{folder} lacks {', '.join(missing)}; delete the folder to download it again, or "
                        f"copy the missing files there")
    if not download_ok:
        raise UserError(f"CIFAR-100 not found in {root}: put the folder {FOLDER}/ (train, test, meta) there, "
                        f"or set --data-dir / CIFAR100_DATA, or allow the download")
    return download(root)


# -- loading and splitting ------------------------------------------------------------------------


def load_meta(folder: Path) -> list[list[str]]:
    return parse_meta(safe_unpickle(folder / "meta"), folder / "meta")


def load_split(folder: Path, name: str, check_size: bool = True) -> Split:
    """One split; with check_size, only of CIFAR-100's own size (50,000 / 10,000 images), which catches
    a wrong or partial file early. Smaller sets (synthetic ones, subsets) load with check_size=False."""
    path = folder / name
    return parse_split(safe_unpickle(path), path, SPLIT_COUNTS[name] if check_size else None)


def load(data_dir: str | os.PathLike, download_ok: bool = True, splits: tuple[str, ...] = ("train", "test"),
         check_size: bool = True) -> tuple[dict[str, Split], Meta]:
    """Load the named splits and the class names."""
    folder = find(data_dir, download_ok)
    fine_names, coarse_names = load_meta(folder)
    loaded = {s: load_split(folder, s, check_size) for s in splits}
    first = next(iter(loaded))
    meta = Meta(fine_names, coarse_names, fine_to_coarse_map(loaded[first], folder / first))
    return loaded, meta


def stratified_split(labels: np.ndarray, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, stratified train/val indices: every class gives val_size / num_classes images (the
    remainder goes to randomly chosen classes). The file order is not the official one, so never
    split by position."""
    n = len(labels)
    if not 0 <= val_size < n:
        raise UserError(f"--val-size {val_size} must be between 0 and {n - 1}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    # Rank of each image within its class in the shuffled order; take ranks 0, 1, ... round-robin
    # over classes (class order at equal rank also shuffled) until val_size images are chosen.
    lab = labels[order]
    rank = np.empty(n, np.int64)
    for c in np.unique(lab):
        where = np.flatnonzero(lab == c)
        rank[where] = np.arange(len(where))
    class_tiebreak = rng.permutation(int(labels.max()) + 1)[lab]
    pick = np.lexsort((class_tiebreak, rank))[:val_size]
    val = np.sort(order[pick])
    train = np.setdiff1d(np.arange(n), val, assume_unique=True)
    return train, val
