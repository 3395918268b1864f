"""Evaluation at the resolution training ended at: validation, `evaluate`, exports and `predict` all
resize the 32 px images the same way, so a model trained at 16 px is judged on what it learned."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from c100 import UserError, checkpoint
from c100.augment import Normalize, Resized, at_size, resize
from c100.cli import main
from c100.config import resolve
from c100.evaluate import evaluate_run, load_eval_split, load_model, metrics
from c100.export import evaluate_weights, export_run, load_sidecar
from c100.predict import Predictor
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


def test_resized_network_sees_what_training_saw():
    net = torch.nn.Conv2d(3, 4, 3, padding=1)
    assert at_size(net, 32) is net  # nothing added for 32 px models
    wrapped = at_size(net, 16)
    x = torch.rand(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = wrapped(x)
        assert isinstance(wrapped, Resized) and out.shape == (2, 4, 16, 16)
        assert torch.allclose(out, net(resize(x.contiguous(), 16)), atol=1e-6)
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.fixture(scope="module")
def run16(cifar_dir, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("C100_ANY_SIZE", "1")
    path = tmp_path_factory.mktemp("runs") / "r16"
    trainer = train(tiny_cfg(cifar_dir, epochs="2", resolutions=["16"]), path, log=lambda *_: None)
    mp.undo()
    return path, trainer


def test_validation_and_evaluate_use_the_training_resolution(run16):
    path, trainer = run16
    state = checkpoint.load(path / "last.pt")
    cfg = trainer.cfg
    split, meta = load_eval_split(cfg, "val")
    model = load_model(state, "last", torch.device("cpu"))
    norm = Normalize(cfg.normalize, torch.device("cpu"))
    with torch.no_grad():
        x = norm(torch.from_numpy(split.images))
        at16 = metrics(model(resize(x, 16)), split.fine, meta.fine_to_coarse)
        at32 = metrics(model(x), split.fine, meta.fine_to_coarse)
    assert at16["loss"] != pytest.approx(at32["loss"], abs=1e-3)  # the size really changes the answer
    last = trainer.history[-1]
    assert last["val_loss"] == pytest.approx(at16["loss"], abs=1e-4) and last["val_acc"] == pytest.approx(at16["top1"])
    result = evaluate_run(path, "val")
    assert result["eval_size"] == 16 and result["top1"] == pytest.approx(at16["top1"])
    assert result["loss"] == pytest.approx(at16["loss"], abs=1e-4)


def test_exports_and_predict_resize_alike(run16, cifar_dir, tmp_path, capsys):
    path, _ = run16
    st, _ = export_run(path, "safetensors", out=tmp_path / "m.safetensors")
    exported = evaluate_weights(st, "val", data_dir=str(cifar_dir))
    assert exported["eval_size"] == 16 and exported["top1"] == pytest.approx(evaluate_run(path, "val")["top1"])
    onnx, _ = export_run(path, "onnx", out=tmp_path / "m.onnx")
    meta = load_sidecar(onnx)
    assert meta["input"]["shape"] == [3, 16, 16] and "resized to 16x16" in meta["input"]["pixels"]
    assert meta["onnx"]["max_abs_logit_diff"] < 1e-4
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    probs = [Predictor.from_checkpoint(path).logits(images).softmax(1),
             Predictor.from_export(st).logits(images).softmax(1),
             Predictor.from_export(onnx).logits(images).softmax(1)]
    for p in probs[1:]:
        assert torch.allclose(p, probs[0], atol=1e-4)
    # and the CLI end to end, from image files
    for i, a in enumerate(images):
        Image.fromarray(a.transpose(1, 2, 0)).save(tmp_path / f"{i}.png")
    files = [str(tmp_path / f"{i}.png") for i in range(5)]
    answers = []
    for args in (["-c", str(path)], ["-w", str(st)], ["-w", str(onnx)]):
        assert main(["predict", *files, *args, "--json"]) == 0
        answers.append([r["top"][0]["label"] for r in json.loads(capsys.readouterr().out)])
    assert answers[0] == answers[1] == answers[2]
