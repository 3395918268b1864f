import hashlib
import io
import os
import pickle
import tarfile

import numpy as np
import pytest

from c100 import UserError, data
from conftest import COARSE, FINE, FINE_TO_COARSE, write_cifar


def test_load_round_trip(tmp_path):
    write_cifar(tmp_path, 300, 200)
    splits, meta = data.load(tmp_path, download_ok=False, check_size=False)
    raw = pickle.load(open(tmp_path / "cifar-100-python/train", "rb"), encoding="bytes")
    tr = splits["train"]
    assert tr.images.shape == (300, 3, 32, 32) and tr.images.dtype == np.uint8
    # channel-planar rows: the first 1024 bytes are the red plane
    assert np.array_equal(tr.images[5, 0].ravel(), raw[b"data"][5, :1024])
    assert np.array_equal(tr.images[5, 2].ravel(), raw[b"data"][5, 2048:])
    assert tr.fine.tolist() == raw[b"fine_labels"] and tr.coarse.tolist() == raw[b"coarse_labels"]
    assert len(splits["test"]) == 200
    assert meta.fine_names == FINE and meta.coarse_names == COARSE
    assert meta.fine_to_coarse == FINE_TO_COARSE


def test_real_counts_enforced_by_default(tmp_path):
    write_cifar(tmp_path, 300, 200)
    with pytest.raises(UserError, match="holds 300 images, expected 50000: a partial or wrong file"):
        data.load(tmp_path, download_ok=False)
    assert len(data.load(tmp_path, download_ok=False, check_size=False)[0]["train"]) == 300


def _rewrite(tmp_path, name, mutate):
    path = tmp_path / "cifar-100-python" / name
    obj = pickle.load(open(path, "rb"), encoding="bytes")
    mutate(obj)
    path.write_bytes(pickle.dumps(obj, protocol=2))


@pytest.mark.parametrize("mutate, message", [
    (lambda o: o.pop(b"data"), "missing key 'data'"),
    (lambda o: o.__setitem__(b"data", o[b"data"].astype(np.int16)), "dtype int16, expected uint8"),
    (lambda o: o.__setitem__(b"data", o[b"data"][:, :3000]), r"shape \(300, 3000\), expected N x 3072"),
    (lambda o: o.__setitem__(b"fine_labels", [100] + o[b"fine_labels"][1:]), "fine labels outside 0..99"),
    (lambda o: o.__setitem__(b"coarse_labels", [-1] + o[b"coarse_labels"][1:]), "coarse labels outside 0..19"),
    (lambda o: o.__setitem__(b"fine_labels", o[b"fine_labels"][:-1]), "label counts differ"),
    (lambda o: o.__setitem__(b"coarse_labels", [(c + 1) % 20 if i == 0 else c
                                                for i, c in enumerate(o[b"coarse_labels"])]), "two superclasses"),
])
def test_structure_errors(tmp_path, mutate, message):
    write_cifar(tmp_path, 300, 200)
    _rewrite(tmp_path, "train", mutate)
    with pytest.raises(UserError, match=message) as e:
        data.load(tmp_path, download_ok=False, check_size=False)
    assert "\n" not in str(e.value) and "download it again" in str(e.value)


def test_meta_errors(tmp_path):
    write_cifar(tmp_path, 300, 200)
    _rewrite(tmp_path, "meta", lambda o: o[b"fine_label_names"].pop())
    with pytest.raises(UserError, match="'fine_label_names' should list 100 names"):
        data.load(tmp_path, download_ok=False, check_size=False)


def test_truncated_and_garbage_files(tmp_path):
    folder = write_cifar(tmp_path, 300, 200)
    raw = (folder / "train").read_bytes()
    (folder / "train").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UserError, match="corrupt or truncated"):
        data.load(tmp_path, download_ok=False, check_size=False)
    (folder / "train").write_bytes(b"not a pickle at all")
    with pytest.raises(UserError, match="corrupt or truncated"):
        data.load(tmp_path, download_ok=False, check_size=False)
    (folder / "train").write_bytes(b"")
    with pytest.raises(UserError, match="corrupt or truncated"):
        data.load(tmp_path, download_ok=False, check_size=False)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_restricted_unpickler_rejects_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = write_cifar(tmp_path, 300, 200)
    (folder / "train").write_bytes(pickle.dumps({b"data": _Evil()}, protocol=2))
    with pytest.raises(UserError, match=r"refers to (posix|os|nt)\.system, which could run code"):
        data.load(tmp_path, download_ok=False, check_size=False)
    assert not (tmp_path / "PWNED").exists()
    # The plain unpickler would have run it: the test's pickle is really malicious.
    pickle.loads((folder / "train").read_bytes())
    assert (tmp_path / "PWNED").exists()


def test_missing_files_and_offline(tmp_path):
    with pytest.raises(UserError, match="CIFAR-100 not found in .*put the folder cifar-100-python/"):
        data.find(tmp_path, download_ok=False)
    folder = write_cifar(tmp_path, 300, 200)
    (folder / "test").unlink()
    with pytest.raises(UserError, match="lacks test"):
        data.find(tmp_path)


def _archive(tmp_path):
    src = tmp_path / "src"
    write_cifar(src, 300, 200)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src / "cifar-100-python", arcname="cifar-100-python")
    path = tmp_path / "archive.tar.gz"
    path.write_bytes(buf.getvalue())
    return path, hashlib.md5(buf.getvalue()).hexdigest()


def test_download_checks_md5_and_extracts(tmp_path):
    archive, md5 = _archive(tmp_path)
    root = tmp_path / "data"
    folder = data.download(root, url=archive.as_uri(), md5=md5)
    assert sorted(p.name for p in folder.iterdir()) == ["meta", "test", "train"]
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp leftovers
    assert len(data.load(root, download_ok=False, check_size=False)[0]["train"]) == 300


def test_download_wrong_md5_is_refused(tmp_path):
    archive, _ = _archive(tmp_path)
    root = tmp_path / "data"
    with pytest.raises(UserError, match="has md5 .* expected 0+: a corrupt or wrong download"):
        data.download(root, url=archive.as_uri(), md5="0" * 32)
    assert not (root / "cifar-100-python").exists()


def test_download_offline_message(tmp_path):
    with pytest.raises(UserError, match="cannot download .*offline, put cifar-100-python.tar.gz"):
        data.download(tmp_path, url=(tmp_path / "nowhere.tar.gz").as_uri())
    assert not list(tmp_path.iterdir())  # no partial file left behind


def test_stratified_split():
    labels = np.repeat(np.arange(100), 50)
    np.random.default_rng(3).shuffle(labels)
    tr, va = data.stratified_split(labels, 1000, seed=7)
    assert len(va) == 1000 and len(tr) == 4000
    assert not set(tr) & set(va)
    assert np.bincount(labels[va], minlength=100).tolist() == [10] * 100
    tr2, va2 = data.stratified_split(labels, 1000, seed=7)
    assert np.array_equal(va, va2)
    _, va3 = data.stratified_split(labels, 1000, seed=8)
    assert not np.array_equal(va, va3)
    _, va4 = data.stratified_split(labels, 150, seed=0)  # uneven: classes differ by at most one
    counts = np.bincount(labels[va4], minlength=100)
    assert counts.sum() == 150 and counts.max() - counts.min() <= 1
    with pytest.raises(UserError, match="--val-size 5000 must be between 0 and 4999"):
        data.stratified_split(labels, 5000, seed=0)
