"""`--images DIR`: a labelled folder of your own images, measured as the test split is."""

import json

import numpy as np
import pytest
from PIL import Image

from c100 import UserError
from c100.cli import main
from c100.data import Meta, load
from c100.folder import read_folder
from c100.inference import load as load_model


def write_folder(root, split, names, n=None):
    """The images of a split as PNG files in one sub-folder per class name."""
    for i in range(len(split) if n is None else n):
        d = root / names[split.fine[i]]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(split.images[i].transpose(1, 2, 0)).save(d / f"{i:05d}.png")
    return root


@pytest.fixture(scope="module")
def test_folder(cifar_dir, tmp_path_factory):
    splits, meta = load(cifar_dir, False, ("test",), check_size=False)
    root = write_folder(tmp_path_factory.mktemp("own") / "mine", splits["test"], meta.fine_names)
    (root / meta.fine_names[3] / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # a corrupt file
    (root / meta.fine_names[3] / "notes.txt").write_text("not an image file: not read")
    return root


def test_a_folder_of_the_test_images_measures_as_the_test_split(tiny_run, test_folder, capsys):
    assert main(["evaluate", str(tiny_run), "--json"]) == 0
    split = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(tiny_run), "--images", str(test_folder), "--json"]) == 0
    out = capsys.readouterr()
    mine = json.loads(out.out)
    assert mine["n"] == split["n"] == 500 and mine["split"] == "images" and mine["images"] == str(test_folder)
    for key in ("top1", "top5", "superclass", "per_class"):
        assert mine[key] == pytest.approx(split[key], abs=1e-6), key
    # the corrupt file is reported by name and counted, and the others are still measured
    assert [s["file"].rsplit("/", 1)[-1] for s in mine["skipped"]] == ["broken.png"]
    assert "broken.png: not an image Pillow can read" in out.err and "1 file(s) skipped" in out.err

    assert main(["evaluate", str(tiny_run), "--images", str(test_folder)]) == 0
    table = capsys.readouterr().out
    assert f"{test_folder}: labelled folder, 500 images" in table and "hardest classes" in table
    assert f"top-1       {split['top1']:.2%}" in table and "skipped: 1 file(s)" in table


def test_unknown_folder_names_are_one_error_naming_them(tiny_run, tmp_path, capsys):
    for name in ("class_07", "Class 08", "clas_09", "dogs"):  # a near miss gets a suggestion
        (tmp_path / name).mkdir()
    assert main(["evaluate", str(tiny_run), "--images", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "2 sub-folder(s) not named after a class of the model: 'clas_09' (did you mean class_09?), 'dogs'" in err[0]
    assert "the 100 class names are: class_00, class_01" in err[0]


def test_any_size_and_format_is_read_as_predict_reads_it(tiny_run, tmp_path):
    model = load_model(tiny_run, backend="torch")
    meta = Meta(model.classes, model.superclasses, model.fine_to_coarse)
    rgb = np.random.default_rng(0).integers(0, 256, (90, 60, 3), dtype=np.uint8)
    (tmp_path / "class_05" / "deeper").mkdir(parents=True)
    Image.fromarray(rgb).save(tmp_path / "class_05" / "a.jpg", quality=90)
    Image.fromarray(rgb).convert("L").save(tmp_path / "class_05" / "deeper" / "b.webp")
    (tmp_path / "class_06").mkdir()
    (tmp_path / "class_06" / "empty.png").write_bytes(b"")
    (tmp_path / ".hidden").mkdir()  # a system folder (.DS_Store's kind) is no class folder
    found = read_folder(tmp_path, meta)
    assert found.split.images.shape == (2, 3, 32, 32) and found.split.fine.tolist() == [5, 5]
    assert found.split.coarse.tolist() == [model.fine_to_coarse[5]] * 2
    assert [s["error"] for s in found.skipped] == ["empty file"]
    (tmp_path / "class_05").rename(tmp_path / ".hidden" / "class_05")
    with pytest.raises(UserError, match="no readable image in its class folders \\(1 could not be read\\)"):
        read_folder(tmp_path, meta)


def test_analyze_and_mosaic_take_a_folder(tiny_run, test_folder, tmp_path, capsys):
    assert main(["analyze", str(tiny_run), "--images", str(test_folder), "--out", str(tmp_path / "an")]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "an" / "analysis.json").read_text())
    assert summary["split"] == "images" and summary["n"] == 500 and out.startswith(f"{test_folder}: top-1")
    assert (tmp_path / "an" / "confident_mistakes.png").is_file()
    assert main(["mosaic", str(tiny_run), "--images", str(test_folder)]) == 0
    assert (tiny_run / "mosaic-mine.png").is_file()
