"""Time-to-accuracy mode: the time budget, the target, progressive resizing, alternating flips and
the compile warm-up kept off the clock."""

import itertools

import pytest
import torch

from c100 import UserError
from c100.augment import AugmentSpec, Normalize, alternating_flips, resize, train_batches
from c100.config import resolve
from c100.schedule import lr_factor, resolution_at
from c100.train import build_trainer, train
from conftest import tiny_cfg


def test_budget_schedule_follows_the_clock():
    cfg = resolve("default", None, {"warmup_epochs": "1", "schedule": "onecycle"})
    # warm-up counts steps (10 per epoch here), the decay follows the fraction of the budget spent
    assert lr_factor(cfg, 0, 1, 10, progress=0.0) == pytest.approx(1 / 11)
    assert lr_factor(cfg, 50, 1, 10, progress=0.25) == pytest.approx(0.75)
    assert lr_factor(cfg, 50, 1, 10, progress=1.0) == 0.0
    assert lr_factor(cfg, 5, 1, 10, progress=0.9) == pytest.approx(0.1)  # a warm-up too long is cut by the decay
    cfg = resolve("default", None, {"schedule": "cosine", "warmup_epochs": "0"})
    assert lr_factor(cfg, 7, 1, 10, progress=0.5) == pytest.approx(0.5)
    cfg = resolve("default", None, {"schedule": "multistep", "milestones": ["0.5"], "gamma": "0.1"})
    assert [lr_factor(cfg, 0, 1, 10, progress=p) for p in (0.49, 0.5)] == pytest.approx([1, 0.1])


def test_resolution_schedule():
    cfg = resolve("default", None, {"resolutions": ["16", "24", "32"], "res_milestones": ["0.4", "0.7"]})
    assert [resolution_at(cfg, p) for p in (0, 0.39, 0.4, 0.69, 0.7, 1.0)] == [16, 16, 24, 24, 32, 32]
    assert resolution_at(resolve("default", None, {}), 0.5) == 32
    x = torch.rand(4, 3, 32, 32)
    small = resize(x, 16)
    assert small.shape == (4, 3, 16, 16) and resize(x, 32) is x
    # antialiased: a 2x downscale of a constant image keeps it constant
    assert torch.allclose(resize(torch.full((1, 3, 32, 32), 0.3), 16), torch.tensor(0.3))


@pytest.mark.parametrize("flags, message", [
    ({"resolutions": ["16", "32"]}, "needs one fraction fewer than --resolutions"),
    ({"resolutions": ["16", "40"], "res_milestones": ["0.5"]}, "whole pixel sizes in 8..32"),
    ({"resolutions": ["16", "24", "32"], "res_milestones": ["0.7", "0.4"]}, "increasing fractions"),
    ({"res_milestones": ["0.5"]}, "without --resolutions"),
    ({"target_acc": "62"}, "fraction in [0, 1]"),
    ({"time_budget": "-1"}, "--time-budget must be >= 0"),
    ({"alt_flip": True, "flip": False}, "--alt-flip needs --flip"),
    ({"compile_mode": "fast"}, "--compile-mode 'fast' is not one of"),
])
def test_bad_budget_flags(flags, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        resolve("default", None, flags)


def test_alternating_flips_show_each_image_both_ways():
    start = torch.rand(64, generator=torch.Generator().manual_seed(0)) < 0.5
    e0, e1, e2 = (alternating_flips(start, e) for e in range(3))
    assert torch.equal(e0, start) and torch.equal(e1, ~start) and torch.equal(e2, start)
    # the mask is applied per image, whatever the order of the batch
    images = torch.arange(64, dtype=torch.uint8).view(64, 1, 1, 1).expand(64, 3, 32, 32).clone()
    images[:, :, :, :16] = 0  # left half dark: a mirrored image has its dark half on the right
    labels = torch.arange(64)
    spec, norm = AugmentSpec(flip=True), Normalize("none", torch.device("cpu"))
    for mask in (e0, e1):
        for x, y in train_batches(images, labels, 16, spec, norm, torch.Generator().manual_seed(1), flip_mask=mask):
            mirrored = x[:, 0, 0, 0] > 0  # left edge bright only if mirrored (or label 0, which is dark anyway)
            assert torch.equal(mirrored[y > 0], mask[y][y > 0])


def test_time_budget_stops_on_time_and_decays_to_zero(cifar_dir, tmp_path):
    trainer = train(tiny_cfg(cifar_dir, epochs="1000", time_budget="2", eval_every="0", target_acc="0.001"),
                    tmp_path / "run", log=lambda *_: None)
    h = trainer.history
    assert len(h) < 1000 and trainer.clock >= 2.0  # stopped by the clock, not the epoch cap
    step_s = max(r["train_s"] for r in h) / min(trainer.step, trainer.per_epoch)
    # within a few steps of the budget; at least 0.5 s of slack, as one step can stall on a busy machine
    slack = max(3 * step_s, 0.5)
    assert trainer.clock < 2.0 + slack
    # sized to the budget: the last step starts near the end, where lr = 0.1 * (1 - progress) ~ 0
    assert h[-1]["lr"] <= 0.1 * slack / 2.0 + 1e-4
    assert all(r["val_acc"] is None for r in h[:-1]) and h[-1]["val_acc"] is not None  # eval_every 0
    assert h[-1]["clock_s"] == pytest.approx(trainer.clock, abs=1e-5)
    assert (trainer.target is not None) == (h[-1]["val_acc"] >= 0.001)
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["finished"]


def test_progressive_resizing_and_eval_every(cifar_dir, tmp_path):
    trainer = train(tiny_cfg(cifar_dir, epochs="4", resolutions=["16", "32"], res_milestones=["0.5"], eval_every="2",
                         alt_flip=True), tmp_path / "run", log=lambda *_: None)
    assert [r["res"] for r in trainer.history] == [16, 16, 32, 32]
    assert [r["val_acc"] is not None for r in trainer.history] == [False, True, False, True]


def test_warm_up_leaves_no_trace(cifar_dir, tmp_path):
    trainer = build_trainer(tiny_cfg(cifar_dir, resolutions=["16", "32"], res_milestones=["0.5"]), tmp_path, log=None)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    seconds = trainer.warm_up()
    assert seconds > 0 and trainer.compile_s == seconds and trainer.step == 0
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics included
    assert not trainer.optimizer.state  # no momentum left behind


def test_warm_up_outlasts_a_one_batch_epoch(cifar_dir, tmp_path):
    # 64 images at batch 64: one batch per epoch, but the warm-up takes 3 per resolution
    trainer = build_trainer(tiny_cfg(cifar_dir, train_size="64", resolutions=["16", "24", "32"],
                                     res_milestones=["0.3", "0.6"]), tmp_path, log=None)
    assert len(list(trainer.batches(0))) == 1
    batches = list(itertools.islice(trainer.warm_up_batches(), 9))
    assert len(batches) == 9 and not torch.equal(batches[0][0], batches[1][0])  # a new order each time
    assert trainer.warm_up() > 0 and trainer.step == 0


def test_train_size_subset_and_epoch_hook(cifar_dir, tmp_path):
    rows = []
    trainer = train(tiny_cfg(cifar_dir, epochs="2", train_size="300"), tmp_path / "run", log=lambda *_: None,
                    on_epoch=lambda t, row: rows.append(row))
    y = trainer.data.train_y
    assert len(y) == 300 and torch.bincount(y, minlength=100).max() <= 4  # stratified: ~3 per class
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1] is trainer.history[-1]


def test_target_records_the_first_reach(cifar_dir, tmp_path, monkeypatch):
    accs = iter([0.2, 0.5, 0.4, 0.7])
    monkeypatch.setattr("c100.train.evaluate_loss_acc", lambda *a: (1.0, next(accs)))
    lines = []
    trainer = train(tiny_cfg(cifar_dir, epochs="4", target_acc="0.45"), tmp_path / "run", log=lines.append)
    assert trainer.target["epoch"] == 2 and trainer.target["val_acc"] == 0.5
    assert trainer.target["train_s"] == pytest.approx(trainer.history[1]["clock_s"], abs=1e-3)
    assert sum("target 45.00% reached" in line for line in lines) == 1
    assert trainer.best_acc == 0.7


@pytest.mark.parametrize("in_budget", [False, True])
def test_validation_passes_count_against_the_budget_when_asked(cifar_dir, tmp_path, in_budget):
    trainer = train(tiny_cfg(cifar_dir, epochs="1000", time_budget="1.5", eval_every="1", val_size="500",
                             budget_includes_eval=in_budget), tmp_path / "run", log=lambda *_: None)
    h = trainer.history
    assert len(h) >= 2 and all(r["val_acc"] is not None for r in h)
    want = 0.0
    for r in h:
        want += r["train_s"]
        # a pass runs on the clock while budget is left after the epoch's training, the one that spends it
        # too (the last row's then: under load that happens); the pass after the budget is spent never does
        if in_budget and want < 1.5:
            want += r["eval_s"]
    # eval_s is timed around the pass, the clock inside it: they differ by microseconds per pass
    assert trainer.clock == pytest.approx(want, abs=2e-3 * len(h))
    assert sum(r["eval_s"] for r in h[:-1]) > 4e-3 * len(h)  # the check can tell the two apart


def test_validation_is_the_test_pass_in_eval_precision(cifar_dir, tmp_path):
    """Validation during training and `c100 evaluate` of the same model agree exactly in fp32, whatever
    the training precision (bf16 here)."""
    from c100.evaluate import evaluate

    trainer = train(tiny_cfg(cifar_dir, epochs="1", precision="bf16", channels_last=False), tmp_path / "run",
                    log=lambda *_: None)
    assert trainer.cfg.eval_precision == "fp32"
    got = evaluate(tmp_path / "run", "val", data_dir=str(cifar_dir))
    last = trainer.history[-1]
    assert got["precision"] == "fp32" and got["top1"] == pytest.approx(last["val_acc"], abs=1e-6)
    assert got["loss"] == pytest.approx(last["val_loss"], abs=2e-6)
    # eval_precision is what validation runs in: with logits large enough for bf16's rounding to show
    # (this near-chance model's are too small), the same weights validate differently in bf16
    head = [m for m in trainer.model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        head.weight.mul_(50)
    fp32_loss = trainer.validate()[0]
    trainer.cfg.eval_precision = "bf16"
    assert abs(trainer.validate()[0] - fp32_loss) > 1e-5  # 4e-5 here; fp32 against evaluate: < 2e-6


def test_a_run_with_tta_validates_tests_and_predicts_with_it(cifar_dir, tmp_path):
    """`tta` belongs to the model: validation during training, `evaluate` and predictions all average
    each image's and its mirror's probabilities, so the validation curve and the test figure agree."""
    import c100
    from c100.evaluate import evaluate, load_eval_split, metrics

    trainer = train(tiny_cfg(cifar_dir, epochs="1", tta=True), tmp_path / "run", log=lambda *_: None)
    got = evaluate(tmp_path / "run", "val", data_dir=str(cifar_dir))
    last = trainer.history[-1]
    assert got["tta"] and "tta_flip" not in evaluate(tmp_path / "run", "val", report_tta=True, data_dir=str(cifar_dir))
    assert got["top1"] == pytest.approx(last["val_acc"], abs=1e-6) and got["loss"] == pytest.approx(last["val_loss"])
    model = c100.load(tmp_path / "run")
    assert model.tta
    model.tta = False  # the two views by hand
    split, meta = load_eval_split(trainer.cfg, "val")
    x = torch.from_numpy(split.images)
    by_hand = ((model.logits(x).softmax(1) + model.logits(x, flip=True).softmax(1)) / 2).log()
    want = metrics(by_hand, split.fine, meta.fine_to_coarse)
    assert got["top1"] == pytest.approx(want["top1"]) and got["loss"] == pytest.approx(want["loss"], abs=1e-5)
    assert not torch.allclose(by_hand, model.logits(x).log_softmax(1), atol=1e-4)  # the views really differ
