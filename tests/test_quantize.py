"""int8 and the inference backends: quantize, load, predict; what `auto` picks; the shipped model's
backends agree."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxruntime", reason="onnxruntime is in the test extra: pip install -e '.[test]'")

import c100  # noqa: E402
from c100 import UserError  # noqa: E402
from c100.cli import main  # noqa: E402
from c100.quantize import cached, calibration_batches, choose, onnx_fp32, quantize, write_int8  # noqa: E402


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("C100_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _images(n=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)


def test_quantize_load_predict_round_trip(tiny_run, cifar_dir, cache, tmp_path, capsys):
    with pytest.raises(UserError, match=r"no int8 model of last\.pt yet: run `c100 quantize"):
        c100.load(tiny_run, backend="int8")
    assert choose(tiny_run / "last.pt") == "torch"  # nothing measured yet: the reference
    lines = []
    path, table = quantize(tiny_run, str(cifar_dir), images=200, log=lines.append)
    assert path == cached(tiny_run / "last.pt", "int8") and path.is_file() and path.parent == cache
    card = json.loads(path.with_name(path.name + ".json").read_text())
    assert card["quantization"]["calibration_images"] == 200 and "test" in card["accuracy"]
    rows = table["backends"]
    assert {"torch", "onnx", "int8"} <= set(rows) and all(r["images_per_s"] > 0 for r in rows.values())
    assert rows["onnx"]["test"]["top1"] == pytest.approx(rows["torch"]["test"]["top1"], abs=1e-3)
    assert table["auto"] in rows and choose(tiny_run / "last.pt") == table["auto"]
    assert any(line.startswith("auto: ") for line in lines)

    x = _images()
    ref = c100.load(tiny_run, backend="torch").logits(x).argmax(1)
    int8 = c100.load(tiny_run, backend="int8")
    assert int8.source == path and (int8.logits(x).argmax(1) == ref).float().mean() >= 0.8
    for i, a in enumerate(x[:3]):
        Image.fromarray(a.transpose(1, 2, 0)).save(tmp_path / f"{i}.png")
    files = [str(tmp_path / f"{i}.png") for i in range(3)]
    assert main(["predict", *files, "-w", str(tiny_run), "--backend", "int8", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3
    assert main(["evaluate", str(tiny_run), "--backend", "int8", "--data-dir", str(cifar_dir)]) == 0
    assert "onnxruntime int8" in capsys.readouterr().out
    assert main(["predict", *files, "-w", str(tiny_run), "--backend", "tflite"]) == 2
    assert "--backend 'tflite' is not one of: auto, torch, torch-bf16, onnx, int8" in capsys.readouterr().err


def test_quantize_needs_the_training_images(tiny_run, cache, tmp_path):
    with pytest.raises(UserError, match="int8 calibration needs the training images: CIFAR-100 not found"):
        quantize(tiny_run, str(tmp_path / "nowhere"))


def test_the_shipped_models_backends_agree(cache):
    """torch fp32 and ONNX Runtime fp32 give the same top-1; int8 (calibrated here on synthetic images, as
    the real training images are not at hand in tests) agrees on most."""
    weights = c100.inference.packaged_weights()
    model = c100.load("default", device="cpu", backend="torch")
    x = torch.from_numpy(_images(64, seed=1))
    write_int8(onnx_fp32(weights), cached(weights, "int8"), calibration_batches(model, _images(100, seed=2)),
               reduce_range=True)
    cached(weights, "int8").with_name(cached(weights, "int8").name + ".json").write_text(
        json.dumps(model.card))
    ref = model.logits(x)
    onnx = c100.load("default", backend="onnx").logits(x)
    torch.testing.assert_close(onnx, ref, rtol=1e-3, atol=1e-3)
    assert torch.equal(onnx.argmax(1), ref.argmax(1))
    agree = (c100.load("default", backend="int8").logits(x).argmax(1) == ref.argmax(1)).float().mean().item()
    assert agree >= 0.75, agree


def test_auto_falls_back_to_torch_without_onnxruntime(tiny_run, cache, monkeypatch):
    path = tiny_run / "last.pt"
    table = cached(path, "backends")
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text(json.dumps({"cpu": c100.checkpoint.device_name(torch.device("cpu")), "auto": "int8"}))
    assert choose(path) == "int8"
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert choose(path) == "torch"  # measured in another environment: this one cannot run it
    table.write_text("{not json")
    monkeypatch.undo()
    assert choose(path) == "torch"
