"""The Python API (`c100.load` -> Model) and the one vocabulary for "which model" on the command line."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import c100
from c100 import UserError
from c100.card import model_card
from c100.cli import main
from c100.export import export
from c100.images import as_batch
from c100.inference import Model, one_torch_thread
from c100.models import create_model

pytest.importorskip("onnxruntime", reason="onnxruntime is in the test extra: pip install -e '.[test]'")


def _images(n=6, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)


@pytest.fixture(scope="module")
def exports(tiny_run, tmp_path_factory):
    d = tmp_path_factory.mktemp("exports")
    return export(tiny_run, "safetensors", out=d / "m.safetensors")[0], export(tiny_run, "onnx", out=d / "m.onnx")[0]


def test_every_source_loads_to_one_model_that_agrees(tiny_run, exports):
    st, onnx = exports
    models = [c100.load(tiny_run, device="cpu"), c100.load(tiny_run / "last.pt"), c100.load(st), c100.load(onnx),
              c100.load(onnx, backend="openvino")]
    x = _images(9)
    ref = models[0].logits(x)
    assert ref.shape == (9, 100) and ref.dtype == torch.float32
    for m in models:
        assert isinstance(m, Model) and m.arch == "tiny-net" and m.input_size == 32 and m.normalization == "cifar100"
        assert len(m.classes) == 100 and len(m.superclasses) == 20 and m.classes[0] == "class_00"
        torch.testing.assert_close(m.logits(x), ref, rtol=1e-4, atol=1e-4)
    assert "onnxruntime" in repr(models[3]) and "torch on cpu" in repr(models[0])
    assert models[4].backend == "openvino fp32" and models[3].backend == "onnxruntime fp32"
    best = c100.load(tiny_run, checkpoint="best")
    assert best.source.name == "best.pt"


def test_the_shipped_model_loads_and_predicts():
    model = c100.load("default")
    assert model.arch == "resnet18" and model.input_size == 24 and len(model.classes) == 100
    assert model.classes[:3] == ["apple", "aquarium_fish", "baby"] and model.superclasses[0] == "aquatic_mammals"
    top = model.predict(_images(1)[0], k=3)
    assert len(top) == 3 and top[0]["prob"] >= top[1]["prob"] >= top[2]["prob"] > 0
    assert top[0]["label"] in model.classes


def test_predict_takes_paths_pil_images_and_arrays(tiny_run, tmp_path):
    model = c100.load(tiny_run)
    x = _images(3)
    for i, a in enumerate(x):
        Image.fromarray(a.transpose(1, 2, 0)).save(tmp_path / f"{i}.png")
    paths = [tmp_path / f"{i}.png" for i in range(3)]
    want = model.predict(x, k=4)
    assert len(want) == 3 and all(len(t) == 4 for t in want)
    assert model.predict(paths, k=4) == want  # 32 x 32 PNGs are lossless: the same pixels
    assert model.predict([str(p) for p in paths], k=4) == want
    assert model.predict([Image.open(p) for p in paths], k=4) == want
    assert model.predict(x.transpose(0, 2, 3, 1), k=4) == want  # N x H x W x 3
    assert model.predict(torch.from_numpy(x), k=4) == want
    assert model.predict(paths[1], k=4) == want[1]  # one image: its list alone
    assert model.predict(x[1], k=4) == want[1]
    # a mixed list, as docs/inference.md shows it: a path, a PIL image, an H x W x 3 array, a tensor
    mixed = [str(paths[0]), Image.open(paths[1]), x[2].transpose(1, 2, 0)]
    assert model.predict(mixed, k=4) == want
    assert model.predict([torch.from_numpy(x[0]), paths[1], x[2]], k=4) == want
    assert model.predict([x[0], x[1].transpose(1, 2, 0), x[2]], k=4) == want  # arrays in either layout
    big = Image.fromarray(np.repeat(np.repeat(x[0].transpose(1, 2, 0), 4, 0), 4, 1))  # 128 x 128: centre, downscale
    assert len(model.predict(big)) == 5


def test_bad_inputs_are_one_line_errors(tiny_run, tmp_path):
    model = c100.load(tiny_run)
    (tmp_path / "junk.png").write_text("not an image")
    with pytest.raises(UserError, match=r"junk\.png: not an image Pillow can read"):
        model.predict(tmp_path / "junk.png")
    with pytest.raises(UserError, match=r"arrays must be uint8 CIFAR images, N x 3 x 32 x 32"):
        model.logits(np.zeros((2, 3, 64, 64), np.uint8))
    with pytest.raises(UserError, match="got torch.float32"):
        model.logits(torch.zeros(2, 3, 32, 32))
    with pytest.raises(UserError, match="cannot classify a dict"):
        model.logits({"a": 1})
    with pytest.raises(UserError, match="cannot classify a int in a list"):
        model.predict([np.zeros((3, 32, 32), np.uint8), 5])
    assert as_batch([]).shape == (0, 3, 32, 32)


def test_a_damaged_onnx_file_is_a_one_line_error_on_either_runtime(exports, tmp_path):
    bad = tmp_path / "m.onnx"
    bad.write_bytes(exports[1].read_bytes()[:5000])
    (tmp_path / "m.onnx.json").write_bytes(exports[1].with_name("m.onnx.json").read_bytes())
    for backend in ("onnx", "openvino"):
        with pytest.raises(UserError, match=r"m\.onnx is not a loadable ONNX model \(") as e:
            c100.load(bad, backend=backend)
        assert "\n" not in str(e.value)


def test_another_runtime_gets_the_cores_and_torch_keeps_its_threads(tiny_run, exports):
    """A session backend preprocesses on one torch thread (libgomp's spinning workers would take the
    runtime's cores) and gives each calling thread its own thread count back (a server's threads too)."""
    import threading

    before = torch.get_num_threads()
    inside = []
    with one_torch_thread():
        inside.append(torch.get_num_threads())
        with one_torch_thread():
            inside.append(torch.get_num_threads())
        inside.append(torch.get_num_threads())
    assert inside == [1, 1, 1] and torch.get_num_threads() == before
    onnx = c100.load(exports[1])
    x = _images(9)
    ref = c100.load(tiny_run, device="cpu")
    torch.testing.assert_close(onnx.logits(x, flip=True), ref.logits(x, flip=True), rtol=1e-4, atol=1e-4)
    counts = []

    def serve_one(n):
        torch.get_num_threads()  # a thread's first torch call sets it to the process-wide count; then its own
        torch.set_num_threads(n)
        onnx.logits(x, batch_size=2)
        counts.append((n, torch.get_num_threads()))

    threads = [threading.Thread(target=serve_one, args=(n,)) for n in (2, 3, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(counts) == [(2, 2), (2, 2), (3, 3), (3, 3)] and torch.get_num_threads() == before


def test_logits_do_not_depend_on_batch_or_layout():
    """Evaluation runs at the run's eval batch in NHWC (faster on CPU); the logits must be those of one
    NCHW pass, batch boundaries included (BatchNorm in eval mode mixes nothing across images)."""
    torch.manual_seed(0)
    module = create_model("resnet18").eval()
    module.apply(lambda m: m.running_var.uniform_(0.5, 2) if isinstance(m, torch.nn.BatchNorm2d) else None)
    card = _card()
    x = torch.randint(0, 256, (23, 3, 32, 32), dtype=torch.uint8)
    reference = Model(card, module, device="cpu", channels_last=False).logits(x, batch_size=500)
    nhwc = Model(card, module, device="cpu", channels_last=True).logits(x, batch_size=7)
    assert reference.shape == (23, 100)
    torch.testing.assert_close(nhwc, reference, rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # BatchNorm folded once: the same outputs as the module itself
        norm = (x.float() / 255 - torch.tensor(c100.data.MEAN).view(1, 3, 1, 1)) / torch.tensor(
            c100.data.STD).view(1, 3, 1, 1)
        torch.testing.assert_close(reference, module(norm), rtol=1e-3, atol=1e-3)


def test_flip_gives_the_mirror_images_logits():
    torch.manual_seed(0)
    model = Model(_card(arch="tiny-net"), create_model("tiny-net").eval(), device="cpu")
    x = torch.randint(0, 256, (9, 3, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(model.logits(x, flip=True), model.logits(x.flip(3)))
    assert not torch.allclose(model.logits(x, flip=True), model.logits(x))


def test_a_tta_model_averages_each_image_and_its_mirror():
    torch.manual_seed(0)
    module = create_model("tiny-net").eval()
    plain = Model(_card(arch="tiny-net"), module, device="cpu")
    tta = Model(_card(arch="tiny-net", tta=True), module, device="cpu")
    assert tta.tta and not plain.tta and not Model(_card(arch="tiny-net", tta=True), module, tta=False).tta
    x = torch.randint(0, 256, (9, 3, 32, 32), dtype=torch.uint8)
    want = ((plain.logits(x).softmax(1) + plain.logits(x, flip=True).softmax(1)) / 2).log()
    torch.testing.assert_close(tta.logits(x), want)
    torch.testing.assert_close(tta.logits(x.flip(3)), want)  # a mirror-image pair gets one answer
    torch.testing.assert_close(tta.logits(x).exp().sum(1), torch.ones(9))  # log-probabilities
    assert [p[0]["label"] for p in tta.predict(x, k=1)] == [tta.classes[i] for i in want.argmax(1)]


def test_input_size_resizes_as_training_did():
    torch.manual_seed(0)
    module = create_model("tiny-net").eval()
    model = Model(_card(arch="tiny-net", resolutions=[16], res_milestones=[]), module, device="cpu")
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    from c100.augment import Normalize, resize

    with torch.no_grad():
        want = module(resize(Normalize("cifar100", torch.device("cpu"))(x), 16))
    assert model.input_size == 16
    torch.testing.assert_close(model.logits(x), want, rtol=1e-4, atol=1e-4)


def test_to_and_live_modules_stay_as_they_are():
    module = create_model("tiny-net").train()
    model = Model(_card(arch="tiny-net"), module, device="cpu")
    assert module.training and not model.net.training  # the live model is not switched to eval mode
    assert model.to("cpu") is model and model.device.type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="torch sees no CUDA GPU"):
            model.to("cuda")


def test_export_the_shipped_weights_to_onnx(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--weights", "default", "--format", "onnx"]) == 0
    path = tmp_path / "resnet18-default.onnx"
    card = json.loads((tmp_path / "resnet18-default.onnx.json").read_text())
    assert path.is_file() and card["onnx"]["max_abs_logit_diff"] < 1e-3 and card["input"]["shape"] == [3, 24, 24]
    assert "dtype" not in card  # the ONNX graph is fp32 whatever the safetensors file held
    x = _images(8, seed=3)
    torch.testing.assert_close(c100.load(path).logits(x), c100.load("default").logits(x), rtol=1e-3, atol=1e-3)


def _card(arch="resnet18", **cfg):
    from c100.config import resolve

    return model_card(resolve("default", None, {"model": arch, **cfg}), [f"c{i}" for i in range(100)],
                      [f"s{i}" for i in range(20)], [i % 20 for i in range(100)])


def test_the_card_says_how_to_run_the_model(tiny_run, exports, tmp_path):
    """Evaluation batch, layout and TTA come from the card's "inference" section (timm's pretrained config
    does the same); a card without one (the shipped model's) falls back to its training config."""
    def settings(m: Model) -> tuple:
        return m.batch_size, m.channels_last, m.tta

    module = create_model("tiny-net").eval()
    card = _card(arch="tiny-net", eval_batch_size=37, channels_last=False, tta=True)
    assert card["inference"] == {"batch_size": 37, "channels_last": False, "tta": True}
    card["trained"]["config"].update(eval_batch_size=5, channels_last=True, tta=False)  # the card wins
    assert settings(Model(card, module, device="cpu")) == (37, False, True)
    old = {k: v for k, v in card.items() if k != "inference"}  # a card written before the section: the config's
    assert settings(Model(old, module, device="cpu")) == (5, True, False)
    shipped = c100.load("default", backend="torch")
    assert "inference" not in shipped.card and settings(shipped) == (100, True, False)
    sidecar = json.loads(exports[0].with_name(exports[0].name + ".json").read_text())
    assert sidecar["inference"] == c100.load(tiny_run).card["inference"]
    for bad, what in [({"batch_size": 0}, "batch_size' must be a positive whole number"),
                      ({"tta": "yes"}, "tta' must be true or false"), ([100], "'inference' must be a mapping")]:
        with pytest.raises(UserError, match=what):
            Model(dict(card, inference=bad), module, source=tmp_path / "m.safetensors")


def test_one_keyword_names_the_checkpoint():
    """`checkpoint` (last or best) in every public function that takes a model source, never `which` or
    `checkpoint_name` (the CLI's --checkpoint)."""
    import inspect

    from c100 import evaluate, export, inference, quantize, report

    for fn in (inference.load, inference.resolve_source, evaluate.evaluate, evaluate.load_predictions, export.export,
               quantize.quantize, report.build_report):
        params = inspect.signature(fn).parameters
        assert "checkpoint" in params and params["checkpoint"].default == "last", fn.__qualname__
        assert not {"which", "checkpoint_name"} & set(params), fn.__qualname__
