"""Evaluation at the resolution training ended at: validation, `evaluate`, exports and `predict` all
resize the 32 px images the same way, so a model trained at 16 px is judged on what it learned."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from c100 import UserError
from c100.augment import Normalize, resize
from c100.card import load_sidecar
from c100.cli import main
from c100.config import resolve
from c100.evaluate import evaluate, load_eval_split, metrics
from c100.export import export
from c100.inference import load
from c100.train import train
from conftest import tiny_cfg


def test_eval_size_is_the_last_training_resolution_unless_set():
    assert resolve("default", None, {}).eval_size() == 32
    assert resolve("default", None, {"resolutions": ["16", "24"], "res_milestones": ["0.5"]}).eval_size() == 24
    assert resolve("default", None, {"resolutions": ["16", "24"], "res_milestones": ["0.5"],
                                     "eval_resolution": "32"}).eval_size() == 32
    assert resolve("cpu-fast", None, {}).eval_size() == 24  # trains at 16 then 24 px
    with pytest.raises(UserError, match=r"--eval-resolution must be a pixel size in 8\.\.32"):
        resolve("default", None, {"eval_resolution": "40"})


@pytest.fixture(scope="module")
def run16(cifar_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("runs") / "r16"
    trainer = train(tiny_cfg(cifar_dir, epochs="2", resolutions=["16"]), path, log=lambda *_: None)
    return path, trainer


def test_validation_and_evaluate_use_the_training_resolution(run16):
    path, trainer = run16
    cfg = trainer.cfg
    split, meta = load_eval_split(cfg, "val")
    model = load(path, device="cpu").module
    norm = Normalize(cfg.normalize, torch.device("cpu"))
    with torch.no_grad():
        x = norm(torch.from_numpy(split.images))
        at16 = metrics(model(resize(x, 16)), split.fine, meta.fine_to_coarse)
        at32 = metrics(model(x), split.fine, meta.fine_to_coarse)
    assert at16["loss"] != pytest.approx(at32["loss"], abs=1e-3)  # the size really changes the answer
    last = trainer.history[-1]
    assert last["val_loss"] == pytest.approx(at16["loss"], abs=1e-4) and last["val_acc"] == pytest.approx(at16["top1"])
    result = evaluate(path, "val")
    assert result["eval_size"] == 16 and result["top1"] == pytest.approx(at16["top1"])
    assert result["loss"] == pytest.approx(at16["loss"], abs=1e-4)


def test_exports_and_predict_resize_alike(run16, cifar_dir, tmp_path, capsys):
    path, _ = run16
    st, _ = export(path, "safetensors", out=tmp_path / "m.safetensors")
    exported = evaluate(st, "val", data_dir=str(cifar_dir))
    assert exported["eval_size"] == 16 and exported["top1"] == pytest.approx(evaluate(path, "val")["top1"])
    onnx, _ = export(path, "onnx", out=tmp_path / "m.onnx")
    meta = load_sidecar(onnx)
    assert meta["input"]["shape"] == [3, 16, 16] and "resized to 16x16" in meta["input"]["pixels"]
    assert meta["onnx"]["max_abs_logit_diff"] < 1e-4
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    probs = [load(source).logits(images).softmax(1) for source in (path, st, onnx)]
    for p in probs[1:]:
        assert torch.allclose(p, probs[0], atol=1e-4)
    # and the CLI end to end, from image files
    for i, a in enumerate(images):
        Image.fromarray(a.transpose(1, 2, 0)).save(tmp_path / f"{i}.png")
    files = [str(tmp_path / f"{i}.png") for i in range(5)]
    answers = []
    for args in (["-w", str(path)], ["-w", str(st)], ["-w", str(onnx)]):
        assert main(["predict", *files, *args, "--json"]) == 0
        answers.append([r["top"][0]["label"] for r in json.loads(capsys.readouterr().out)])
    assert answers[0] == answers[1] == answers[2]
