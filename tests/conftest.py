"""Synthetic CIFAR-100 in the official file format (Python pickles, bytes keys, N x 3072 uint8),
small enough to train on in seconds. Images carry a class-dependent colour so a model can learn."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

FINE = [f"class_{i:02d}" for i in range(100)]
COARSE = [f"super_{i:02d}" for i in range(20)]
FINE_TO_COARSE = [i % 20 for i in range(100)]


def make_split(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    fine = np.arange(n) % 100
    rng.shuffle(fine)
    # Each class gets its own mean colour, plus noise: learnable, but not trivially.
    base = np.random.default_rng(0).integers(30, 225, size=(100, 3))
    img = base[fine][:, :, None, None] + rng.normal(0, 25, size=(n, 3, 32, 32))
    data = np.clip(img, 0, 255).astype(np.uint8).reshape(n, 3072)
    return {b"filenames": [f"img_{i}.png".encode() for i in range(n)], b"batch_label": b"synthetic",
            b"fine_labels": fine.tolist(), b"coarse_labels": [FINE_TO_COARSE[f] for f in fine],
            b"data": data}


def write_cifar(root: Path, n_train: int = 1000, n_test: int = 500) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, obj in (("train", make_split(n_train, 1)), ("test", make_split(n_test, 2)),
                      ("meta", {b"fine_label_names": [f.encode() for f in FINE],
                                b"coarse_label_names": [c.encode() for c in COARSE]})):
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)
    return folder


@pytest.fixture(autouse=True, scope="session")
def _own_cache(tmp_path_factory):
    """Derived models (ONNX, int8) and backend measurements go to a cache of the tests' own, so neither a
    user's ~/.cache/c100 nor an earlier test changes what `--backend auto` picks."""
    mp = pytest.MonkeyPatch()
    mp.setenv("C100_CACHE", str(tmp_path_factory.mktemp("c100-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory) -> Path:
    """A data dir with synthetic cifar-100-python/ (1000 train, 500 test images)."""
    root = tmp_path_factory.mktemp("data")
    write_cifar(root)
    return root


# A tiny network for the slower tests (resume, schedules): the same code paths as ResNet18
# (conv, BN with running statistics, linear) at a fraction of the cost.
import torch.nn as nn  # noqa: E402

from c100.models import register  # noqa: E402


@register
def tiny_net(num_classes: int = 100) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.MaxPool2d(4), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))


def tiny_cfg(cifar_dir: Path, **kw):
    """A validated config for a fast tiny-net run on the synthetic data; keyword args override."""
    from c100.config import resolve

    flags = {"model": "tiny-net", "data_dir": str(cifar_dir), "val_size": "100", "epochs": "3",
             "batch_size": "64", "precision": "fp32", "download": False, "check_size": False}
    return resolve("default", None, {**flags, **kw})


@pytest.fixture(scope="session")
def tiny_run(cifar_dir, tmp_path_factory) -> Path:
    """A finished 2-epoch tiny-net run on the synthetic data, shared by the picture and predict tests."""
    from c100.train import train

    path = tmp_path_factory.mktemp("runs") / "tiny"
    train(tiny_cfg(cifar_dir, epochs="2"), path, log=lambda *_: None)
    return path
