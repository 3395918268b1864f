import json
import re
import struct

import numpy as np
from PIL import Image

from c100.cli import main
from c100.evaluate import load_predictions
from c100.mosaic import GREEN, RED, draw_mosaic, parse_classes


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", data[16:24])


def test_mosaic_frames_match_predictions(tiny_run):
    p = load_predictions(tiny_run, "test")
    classes = list(range(100))
    img = draw_mosaic(p, classes, per_row=500, scale=1)  # rows wide enough for every image: no sampling
    pred, y = p.probs.argmax(1).numpy(), p.split.fine
    a = np.asarray(img).astype(int)
    green = (a == GREEN).all(2)
    red = (a == RED).all(2)
    frame = green | red
    # A tile's top-left corner: a frame pixel with no frame pixel to its left or above.
    corner = frame.copy()
    corner[:, 1:] &= ~frame[:, :-1]
    corner[1:, :] &= ~frame[:-1, :]
    assert corner.sum() == len(y)  # every test image drawn once
    assert (corner & green).sum() == (pred == y).sum()  # green exactly where right
    # and each image sits in the row of its predicted class: rows hold as many tiles as predictions
    rows = np.flatnonzero(corner.any(1))
    per_row = [int(corner[r].sum()) for r in rows]
    assert sorted(per_row) == sorted(int(n) for n in np.bincount(pred, minlength=100) if n)


def test_mosaic_cli_sizes_and_subset(tiny_run, tmp_path, capsys):
    assert main(["mosaic", str(tiny_run), "--classes", "0-4", "--per-row", "5", "--scale", "1",
                 "--out", str(tmp_path / "a.png")]) == 0
    assert main(["mosaic", str(tiny_run), "--classes", "class_00,class_01,2-4", "--per-row", "10", "--scale", "1",
                 "--out", str(tmp_path / "b.png")]) == 0
    assert main(["mosaic", str(tiny_run), "--classes", "0-9", "--per-row", "5", "--scale", "1",
                 "--out", str(tmp_path / "c.png")]) == 0
    (wa, ha), (wb, hb), (wc, hc) = (_png_size(tmp_path / f"{n}.png") for n in "abc")
    assert ha == hb and wb - wa == 5 * (32 + 2 * 2 + 2)  # five more 36-px tiles and their gaps
    assert wc == wa and (hc - ha) % 5 == 0 and hc > ha  # five more rows of equal height
    out = capsys.readouterr().out
    assert re.search(r"a\.png  \(\d+x\d+ px, \d+ kB\)", out)
    assert main(["mosaic", str(tiny_run), "--classes", "banana"]) == 2
    assert "'banana' is neither a class name nor an index range" in capsys.readouterr().err
    assert parse_classes("3-5,0", [f"c{i}" for i in range(10)]) == [3, 4, 5, 0]


def test_analyze_and_report(tiny_run, capsys):
    assert main(["analyze", str(tiny_run)]) == 0
    out = tiny_run / "analysis-test"
    summary = json.loads((out / "analysis.json").read_text())
    for name in summary["files"].values():
        w, h = _png_size(out / name)
        assert w > 300 and h > 200
        Image.open(out / name).verify()
    assert 0 <= summary["ece"] <= 1 and len(summary["per_class"]) == 100
    assert sum(b["n"] for b in summary["calibration_bins"]) == summary["n"] == 500
    assert main(["report", str(tiny_run)]) == 0
    md = (tiny_run / "report" / "report.md").read_text()
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(refs) >= 8 and all((tiny_run / "report" / r).is_file() for r in refs)
    assert "mistakes_explained.png" in refs  # the most confident mistakes' heat maps (Grad-CAM)
    w, h = _png_size(tiny_run / "report" / "mistakes_explained.png")
    assert (w, h) == (2 * (6 + 3 * (128 + 6)), 26 + 3 * (6 + 128 + 24))  # six mistakes: image, said, is
    assert "top-1" in md and "resnet" not in md.split("\n")[0]  # the title names this run's model
    page = (tiny_run / "report" / "report.html").read_text()
    srcs = re.findall(r"src='([^']+)'", page)
    assert len(srcs) == len(refs) and all(s.startswith("data:image/png;base64,") for s in srcs)  # self-contained
    assert main(["report", str(tiny_run / "nothing")]) == 2
    assert "not a run folder" in capsys.readouterr().err
