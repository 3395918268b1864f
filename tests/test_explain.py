"""Explanations: Grad-CAM maps that point at the evidence, in the API, `c100 explain`, the demo and the report."""

import io
import json
import urllib.request

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import c100
from c100 import UserError
from c100.card import model_card
from c100.cli import main
from c100.config import resolve
from c100.export import export
from c100.inference import Model, one_torch_thread
from c100.serve import create_app, serve_in_thread

COLOURS = np.array([(230, 30, 30), (30, 200, 30), (30, 30, 230), (230, 230, 30)])  # the class is the patch's colour
CORNERS = [(0, 0), (0, 24), (24, 0), (24, 24)]  # top-left pixel of an 8 x 8 patch


def patch_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grey noise with one coloured 8 x 8 patch in a random corner: (images, class = colour, corner)."""
    x = np.repeat(rng.integers(60, 200, (n, 1, 32, 32)), 3, 1).astype(np.uint8)
    y, corner = rng.integers(0, 4, n), rng.integers(0, 4, n)
    for i in range(n):
        r, c = CORNERS[corner[i]]
        x[i, :, r:r + 8, c:c + 8] = COLOURS[y[i]][:, None, None]
    return x, y, corner


@pytest.fixture(scope="module")
def corner_model() -> Model:
    """A small CNN trained (60 steps, under a second on one thread, seeded) to tell the patch colours apart."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    card = model_card(resolve("default", None, {"model": "tiny-net"}), ["red", "green", "blue", "yellow"],
                      ["warm", "cool"], [0, 1, 1, 0])
    model = Model(card, net, device="cpu", channels_last=False)
    norm = model._inputs  # the model's own normalisation, so the trained net and its Model agree
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    with one_torch_thread():  # one thread: deterministic, and no fight for cores with a busy machine
        for _ in range(60):
            x, y, _ = patch_images(32, rng)
            loss = nn.functional.cross_entropy(net(norm(torch.from_numpy(x))), torch.from_numpy(y))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return Model(card, net.eval(), device="cpu", channels_last=False)


def quadrant_share(heat: np.ndarray, corner: int) -> float:
    r, c = (np.array(CORNERS[corner]) >= 16).astype(int) * 16
    return float(heat[r:r + 16, c:c + 16].sum() / max(heat.sum(), 1e-9))


@pytest.mark.parametrize("tta", [False, True])
def test_the_map_points_at_the_patch_that_decides_the_class(corner_model, tta):
    model = Model(corner_model.card, corner_model.module, device="cpu", channels_last=False, tta=tta)
    x, y, corner = patch_images(24, np.random.default_rng(1))
    answers = model.explain(x, k=1)
    assert [a[0]["label"] for a in answers] == [model.classes[c] for c in y]  # it learned the colours
    for a, where in zip(answers, corner, strict=True):
        heat = a[0]["map"]
        assert heat.shape == (32, 32) and heat.dtype == np.float32 and heat.min() >= 0 and heat.max() == 1
        peak = np.unravel_index(heat.argmax(), heat.shape)
        assert (peak[0] >= 16, peak[1] >= 16) == (CORNERS[where][0] >= 16, CORNERS[where][1] >= 16)
        # and the patch's quadrant holds more of the map than any other (with TTA: the mirror's map mirrored back)
        shares = [quadrant_share(heat, q) for q in range(4)]
        assert np.argmax(shares) == where and shares[where] > 0.28


def test_explain_gives_predicts_answers_with_a_map_each(tiny_run):
    model = c100.load(tiny_run, backend="torch")
    x = np.random.default_rng(2).integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    answers, top = model.explain(x, k=3), model.predict(x, k=3)
    assert [[a["label"] for a in per] for per in answers] == [[t["label"] for t in per] for per in top]
    assert all(a["map"].shape == (32, 32) for per in answers for a in per)
    one = model.explain(x[0], targets=[[7, 9]])  # one image: its list alone; chosen classes
    assert [a["label"] for a in one] == ["class_07", "class_09"]
    np.testing.assert_allclose(model.explain(x[:1], k=3, layer="3")[0][0]["map"].shape, (32, 32))
    with pytest.raises(UserError, match="no layer 'nope' in the network"):
        model.explain(x, layer="nope")


def test_an_onnx_backend_explains_with_the_torch_network_of_its_weights(tiny_run, tmp_path):
    weights = export(tiny_run, "safetensors", out=tmp_path / "m.safetensors")[0]
    onnx = export(tiny_run, "onnx", out=tmp_path / "m.onnx")[0]
    x = np.random.default_rng(3).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    ref = c100.load(weights, backend="torch").explain(x, k=2)
    via = c100.load(weights, backend="onnx").explain(x, k=2)
    for a, b in zip(ref, via, strict=True):
        assert [t["label"] for t in a] == [t["label"] for t in b]
        np.testing.assert_allclose(a[0]["map"], b[0]["map"], atol=1e-4)
    with pytest.raises(UserError, match="is an ONNX graph, which has no gradients for Grad-CAM"):
        c100.load(onnx).explain(x)


def test_cli_explain_writes_one_picture_per_image(tiny_run, tmp_path, capsys):
    for i in range(2):
        Image.fromarray(np.full((40, 60, 3), 90 * i, np.uint8)).save(tmp_path / f"img{i}.jpg")
    (tmp_path / "broken.png").write_text("not an image")
    out = tmp_path / "maps"
    assert main(["explain", str(tmp_path), "-w", str(tiny_run), "--top-k", "2", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert "broken.png: not an image Pillow can read" in captured.err
    lines = captured.out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(str(out / "img0-explain.png"))
    with Image.open(out / "img1-explain.png") as im:
        assert im.size == (6 + 3 * (192 + 6), 24 + 192 + 24)  # the image and two maps


def test_the_demo_sends_the_map_beside_its_answer(tiny_run):
    model = c100.load(tiny_run, device="cpu")
    srv, url = serve_in_thread(create_app(model))
    try:
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(4).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buf, "PNG")
        for query, has_map in (("", False), ("?explain=1", True)):
            req = urllib.request.Request(url + "/api/predict" + query, data=buf.getvalue(), method="POST")
            with urllib.request.urlopen(req, timeout=30) as r:
                out = json.loads(r.read())
            assert len(out["top"]) == 5 and ("map" in out) == has_map
        assert out["map"].startswith("data:image/png;base64,")
    finally:
        srv.shutdown()
