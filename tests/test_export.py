import json

import numpy as np
import pytest
import torch
from PIL import Image

from c100 import UserError
from c100.card import load_sidecar
from c100.cli import main
from c100.export import export
from c100.inference import load
from c100.networks import load_safetensors
from c100.runtimes import OnnxSession

pytest.importorskip("onnxruntime", reason="onnxruntime is in the test extra: pip install -e '.[test]'")


def _images(n=6):
    return np.random.default_rng(0).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)


def test_safetensors_round_trip_and_sidecar(tiny_run, tmp_path):
    assert main(["evaluate", str(tiny_run)]) == 0  # so the sidecar can record a measured accuracy
    path, side = export(tiny_run, "safetensors", out=tmp_path / "m.safetensors")
    meta = load_sidecar(path)
    assert side.is_file() and meta["arch"] == "tiny-net" and len(meta["classes"]) == 100
    assert meta["input"]["shape"] == [3, 32, 32] and meta["normalize"]["kind"] == "cifar100"
    assert len(meta["fine_to_coarse"]) == 100 and meta["trained"]["epochs"] == 2
    assert 0 <= meta["accuracy"]["test"]["top1"] <= 1
    ref = load(tiny_run, device="cpu").module
    got = load_safetensors(path, meta)
    for (k, a), b in zip(ref.state_dict().items(), got.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    half, _ = export(tiny_run, "safetensors", out=tmp_path / "h.safetensors", half=True)
    assert half.stat().st_size < 0.6 * path.stat().st_size
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert (load_safetensors(half, load_sidecar(half))(x) - ref(x)).abs().max() < 0.05


def test_onnx_matches_pytorch_with_dynamic_batch(tiny_run, tmp_path):
    path, _ = export(tiny_run, "onnx", out=tmp_path / "m.onnx")
    meta = load_sidecar(path)
    assert meta["onnx"]["max_abs_logit_diff"] < 1e-4 and meta["onnx"]["top1_agreement"] == 1.0
    net = OnnxSession(path)
    ref = load(tiny_run, device="cpu").module
    for n in (1, 7, 33):  # any batch size
        x = torch.randn(n, 3, 32, 32)
        out = net(x).numpy()
        with torch.no_grad():
            want = ref(x).numpy()
        assert out.shape == (n, 100) and np.abs(out - want).max() < 1e-4
        assert (out.argmax(1) == want.argmax(1)).all()


def test_predict_with_exported_weights_agrees(tiny_run, tmp_path, capsys):
    for i, a in enumerate(_images(4)):
        Image.fromarray(a.transpose(1, 2, 0)).save(tmp_path / f"{i}.png")
    answers = []
    st, _ = export(tiny_run, "safetensors", out=tmp_path / "m.safetensors")
    onnx, _ = export(tiny_run, "onnx", out=tmp_path / "m.onnx")
    for args in (["-w", str(tiny_run)], ["-w", str(st)], ["-w", str(onnx)]):
        assert main(["predict", *[str(tmp_path / f"{i}.png") for i in range(4)], *args, "--json"]) == 0
        answers.append([[t["label"] for t in r["top"]] for r in json.loads(capsys.readouterr().out)])
    assert answers[0] == answers[1] == answers[2]


def test_export_errors(tiny_run, tmp_path, capsys):
    (tmp_path / "x.safetensors").write_bytes(b"junk")
    assert main(["predict", "a.png", "-w", str(tmp_path / "x.safetensors")]) == 2
    assert "sidecar" in capsys.readouterr().err
    (tmp_path / "x.safetensors.json").write_text(json.dumps({"format": "c100-export-1", "arch": "tiny-net",
                                                             "num_classes": 100, "normalize": {"kind": "none"},
                                                             "classes": [], "superclasses": [],
                                                             "fine_to_coarse": []}))
    assert main(["predict", "a.png", "-w", str(tmp_path / "x.safetensors")]) == 2
    assert "not a readable safetensors file" in capsys.readouterr().err
    assert main(["evaluate"]) == 2
    assert "which model? pass 'default'" in capsys.readouterr().err
    assert main(["evaluate", str(tiny_run), "-w", "default"]) == 2
    assert "two models given" in capsys.readouterr().err
    with pytest.raises(UserError, match="--format 'tflite' is not one of"):
        export(tiny_run, "tflite")
    onnx, _ = export(tiny_run, "onnx", out=tmp_path / "m.onnx")
    with pytest.raises(UserError, match="already an ONNX network"):
        export(onnx, "safetensors")
    st, _ = export(tiny_run, "safetensors", out=tmp_path / "m.safetensors")
    with pytest.raises(UserError, match="would overwrite it; pass another --out"):
        export(st, "safetensors")


def test_evaluate_exported_weights(tiny_run, cifar_dir, tmp_path, capsys):
    assert main(["evaluate", str(tiny_run)]) == 0
    want = json.loads((tiny_run / "eval-test-last.json").read_text())
    path, _ = export(tiny_run, "safetensors", out=tmp_path / "m.safetensors")
    capsys.readouterr()
    assert main(["evaluate", "--weights", str(path), "--data-dir", str(cifar_dir)]) == 0
    out = capsys.readouterr().out
    assert f"top-1       {want['top1']:.2%}" in out and f"recorded at export: top-1 {want['top1']:.2%}" in out
    onnx, _ = export(path, "onnx")  # from the exported file: beside it, under its own name
    assert onnx == tmp_path / "m.onnx" and load_sidecar(onnx)["accuracy"]["test"]["top1"] == want["top1"]
    assert main(["evaluate", str(onnx), "--data-dir", str(cifar_dir)]) == 0
    assert f"top-1       {want['top1']:.2%}" in capsys.readouterr().out  # the same answer from onnxruntime
