import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from c100.cli import main
from c100.images import load_image


def _huge_png(path, w=100_000, h=100_000):
    """A PNG whose header claims w x h pixels (the pixel data is never reached)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_image_modes_become_32x32_rgb(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb).convert("L").save(tmp_path / "gray.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.gif")
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)).save(tmp_path / "deep.png")
    rgba = np.zeros((32, 32, 4), np.uint8)  # fully transparent: composited on white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.png")
    for name in ("rgb.png", "gray.png", "palette.gif", "deep.png", "clear.png"):
        a = load_image(tmp_path / name)
        assert a.shape == (3, 32, 32) and a.dtype == np.uint8, name
    assert (load_image(tmp_path / "clear.png") == 255).all()
    g = load_image(tmp_path / "gray.png")
    assert np.array_equal(g[0], g[1]) and np.array_equal(g[1], g[2])
    deep = load_image(tmp_path / "deep.png")
    assert deep.max() > 200 and deep.min() < 50  # 16-bit range mapped onto 8 bits, not clipped


def test_exif_rotation_is_applied(tmp_path):
    a = np.zeros((32, 64, 3), np.uint8)
    a[:, :32] = (255, 0, 0)  # left half red, right half blue
    a[:, 32:] = (0, 0, 255)
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    Image.fromarray(a).rotate(-90, expand=True).save(tmp_path / "upright.png")
    got, want = load_image(tmp_path / "rotated.jpg").astype(int), load_image(tmp_path / "upright.png").astype(int)
    assert np.abs(got - want).mean() < 8  # the same picture, up to JPEG noise
    assert got[0, :8].mean() > 200 and got[2, -8:].mean() > 200  # red on top, blue at the bottom


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_text("hello, I am text"), "not an image Pillow can read"),
    (lambda p: _huge_png(p, 9000, 9000), "image too large: 9000x9000 pixels is over the 64-megapixel limit"),
    (lambda p: _huge_png(p, 100_000, 100_000), "image too large: over Pillow's decompression-bomb limit"),
])
def test_bad_files(tmp_path, make, message):
    p = tmp_path / "bad.png"
    make(p)
    with pytest.raises(ValueError, match=message):
        load_image(p)


def test_truncated_png(tmp_path):
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_image(tmp_path / "t.png")


def test_cli_predict_folder_json_and_exit_code(tiny_run, tmp_path, capsys):
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(3):
        Image.fromarray(np.full((50, 50, 3), 40 * i, np.uint8)).save(d / f"ok{i}.png")
    (d / "notes.txt").write_text("ignored: not an image suffix")
    assert main(["predict", str(d), "-w", str(tiny_run), "--json", "--top-k", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [Path_name(r["file"]) for r in out] == ["ok0.png", "ok1.png", "ok2.png"]
    for r in out:
        assert r["error"] is None and len(r["top"]) == 3
        probs = [t["prob"] for t in r["top"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
        assert r["top"][0]["label"].startswith("class_") and r["top"][0]["superclass"].startswith("super_")

    (d / "broken.png").write_text("not really a png")
    rc = main(["predict", str(d), str(tmp_path / "missing.jpg"), "-w", str(tiny_run)])
    captured = capsys.readouterr()
    assert rc == 1
    rows = captured.out.strip().splitlines()[1:]
    assert len(rows) == 5 and sum("error:" in r for r in rows) == 2
    assert "error: not an image Pillow can read" in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 2 and "broken.png: not an image" in err[0] and "missing.jpg: no such file" in err[1]


def test_cli_predict_usage_errors(tiny_run, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(tmp_path / "empty"), "-w", str(tiny_run)]) == 2
    assert "holds no image files" in capsys.readouterr().err
    assert main(["predict", "x.png", "-w", str(tmp_path / "nope")]) == 2
    assert "neither a run folder nor a model file" in capsys.readouterr().err


def Path_name(s):  # noqa: N802
    from pathlib import Path

    return Path(s).name
