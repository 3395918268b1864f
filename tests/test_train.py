import subprocess
import sys

import pytest
import torch

from c100 import UserError, checkpoint
from c100.augment import Normalize
from c100.cli import main
from c100.config import resolve
from c100.schedule import lr_factor, mixing_at
from c100.train import WHITEN_IMAGES, build_trainer, l2_penalty, resume, train
from conftest import tiny_cfg, write_cifar


def test_lr_schedules():
    cfg = resolve("default", None, {"epochs": "10", "warmup_epochs": "1", "schedule": "onecycle"})
    f = [lr_factor(cfg, s, 100, 10) for s in range(100)]
    assert f[0] == pytest.approx(1 / 11) and f[10] == pytest.approx(1.0) and max(f) == 1.0
    assert f[55] == pytest.approx(0.5) and f[99] == pytest.approx(1 / 90)
    cfg = resolve("default", None, {"schedule": "cosine", "warmup_epochs": "0"})
    assert lr_factor(cfg, 0, 100, 10) == 1.0 and lr_factor(cfg, 50, 100, 10) == pytest.approx(0.5)
    cfg = resolve("seed", None, {})
    assert lr_factor(cfg, 250, 1000, 10) == pytest.approx(1 / (1 + 0.004 * 250))  # Keras' inverse-time decay
    cfg = resolve("default", None, {"schedule": "multistep", "milestones": ["0.5", "0.75"], "gamma": "0.1"})
    assert [lr_factor(cfg, s, 100, 10) for s in (49, 50, 74, 75)] == pytest.approx([1, 0.1, 0.1, 0.01])
    cfg = resolve("default", None, {"epochs": "2", "warmup_epochs": "5"})
    assert lr_factor(cfg, 99, 100, 50) < 0.05  # a warm-up longer than the run is capped: it still decays
    for schedule in ("onecycle", "cosine"):  # past its planned steps the lr stays at zero (a benchmark's extra
        cfg = resolve("default", None, {"schedule": schedule})  # rounds ran at lr -0.197 and diverged on an H200)
        assert [lr_factor(cfg, s, 100, 10) for s in (100, 120, 199)] == [0.0, 0.0, 0.0]


def test_mixing_applies_inside_its_window_only():
    cfg = resolve("default", None, {"cutmix": "1", "mix_from": "0.35", "mix_until": "0.85"})
    assert [mixing_at(cfg, p) for p in (0.0, 0.34, 0.35, 0.6, 0.849, 0.85, 1.0)] == [
        False, False, True, True, True, False, False]
    assert not mixing_at(resolve("default", None, {"mix_from": "0.2"}), 0.5)  # neither MixUp nor CutMix on
    assert mixing_at(resolve("default", None, {"mixup": "0.4"}), 0.0)  # the defaults: the whole run
    with pytest.raises(UserError, match=r"--mix-from must be a fraction of training in \[0, --mix-until\)"):
        resolve("default", None, {"cutmix": "1", "mix_from": "0.9", "mix_until": "0.85"})


def test_l2_penalty_matches_tf_l2_loss():
    params = [torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]
    assert l2_penalty(params).item() == pytest.approx((1 + 4 + 9) / 2)


def test_resumed_run_equals_straight_run(cifar_dir, tmp_path):
    kw = {"ema": "0.9", "label_smoothing": "0.1", "cutout": "8", "l2": "1e-4", "grad_clip": "5", "mixup": "0.4",
          "cutmix": "1", "mix_from": "0.2", "mix_until": "0.7", "ema_from": "0.5"}
    straight = train(tiny_cfg(cifar_dir, **kw), tmp_path / "straight", log=lambda *_: None)

    def killer(line):  # stop the second run right after epoch 2 is saved, as a kill would
        if line.startswith("epoch   2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny_cfg(cifar_dir, **kw), tmp_path / "killed", log=killer)
    assert checkpoint.load(tmp_path / "killed" / "last.pt")["epoch"] == 2
    resumed = resume(tmp_path / "killed", log=lambda *_: None)
    for name in ("model", "ema"):
        a = getattr(straight, name) if name == "model" else straight.ema.model
        b = getattr(resumed, name) if name == "model" else resumed.ema.model
        for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(va, vb), f"{name}.{k} differs after resume"
    timings = ("epoch_s", "train_s", "images_per_s", "clock_s", "eval_s")
    strip = [{k: v for k, v in r.items() if k not in timings} for r in straight.history]
    assert strip == [{k: v for k, v in r.items() if k not in timings} for r in resumed.history]
    assert resumed.clock > resumed.history[1]["clock_s"]  # the training clock carried over, not restarted
    csv_rows = (tmp_path / "killed" / "metrics.csv").read_text().strip().splitlines()
    assert len(csv_rows) == 4 and csv_rows[0].startswith("epoch,lr,res,train_loss")
    with pytest.raises(UserError, match="already finished all 3 epochs; nothing to resume"):
        resume(tmp_path / "killed")


def test_the_ema_follows_the_weights_until_ema_from(cifar_dir, tmp_path):
    """--ema-from: an average over the tail only; before it the EMA is the weights themselves."""
    def ema_and_model(ema_from: str):
        t = train(tiny_cfg(cifar_dir, epochs="2", ema="0.5", ema_from=ema_from), tmp_path / ema_from,
                  log=lambda *_: None)
        return list(t.ema.model.parameters()), list(t.model.parameters())

    late, weights = ema_and_model("0.99")  # 28 steps: the last starts at 27/28 of training, before 0.99
    assert all(torch.equal(a, b) for a, b in zip(late, weights, strict=True))
    tail, weights = ema_and_model("0.5")
    assert not all(torch.equal(a, b) for a, b in zip(tail, weights, strict=True))


def test_checkpoint_contract(cifar_dir, tmp_path):
    train(tiny_cfg(cifar_dir, epochs="1", ema="0.5"), tmp_path / "run", log=lambda *_: None)
    for name in ("last.pt", "best.pt"):
        state = torch.load(tmp_path / "run" / name, weights_only=True)  # plain tensors and values only
        assert state["arch"] == "tiny-net" and state["epoch"] == 1 and len(state["classes"]) == 100
        assert len(state["fine_to_coarse"]) == 100 and state["config"]["model"] == "tiny-net"
        assert not any(k.startswith(("module.", "_orig_mod.")) for k in state["model"])
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert {"optimizer", "scheduler", "ema", "rng", "history", "scaler"} <= set(last)
    assert last["finished"] and last["scheduler"]["step"] == 14
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "best.pt", "config.yaml", "env.json", "last.pt", "metrics.csv"]


def test_cli_train_and_evaluate_resnet18(tmp_path, capsys):
    write_cifar(tmp_path / "data", 200, 100)
    run = tmp_path / "r18"
    rc = main(["train", "--data-dir", str(tmp_path / "data"), "--out", str(run), "--epochs", "1", "--val-size",
               "100", "--batch-size", "50", "--no-download", "--no-check-size"])
    assert rc == 0
    assert "epoch   1" in capsys.readouterr().out
    rc = main(["evaluate", str(run), "--report-tta"])
    out = capsys.readouterr().out
    assert rc == 0 and "test set, 100 images, resnet18" in out and "with flip TTA" in out
    import json

    r = json.loads((run / "eval-test-last.json").read_text())
    assert 0 <= r["top1"] <= r["top5"] <= 1 and r["top1"] <= r["superclass"] and r["n"] == 100
    assert len(r["per_class"]) == 100 and "tta_flip" in r


def test_cli_errors_are_one_line(cifar_dir, tmp_path, capsys):
    train(tiny_cfg(cifar_dir, epochs="1"), tmp_path / "run", log=lambda *_: None)
    before = (tmp_path / "run" / "last.pt").read_bytes()
    cases = [
        (["train", "--out", str(tmp_path / "run"), "--data-dir", str(cifar_dir)], "already exists and is not empty"),
        (["train", "--preset", "nope"], "unknown preset 'nope'"),
        (["train", "--model", "resnet99", "--out", str(tmp_path / "x")], "unknown model 'resnet99'"),
        (["train", "--resume", str(tmp_path / "run")], "already finished all 1 epochs"),
        (["train", "--resume", str(tmp_path / "nothing")], "nothing to resume in"),
        (["evaluate", str(tmp_path / "nothing")], "neither a run folder nor a model file"),
        (["train", "--data-dir", str(tmp_path / "empty"), "--no-download", "--out", str(tmp_path / "y")],
         "CIFAR-100 not found"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and err.startswith("c100: error:"), (argv, err)
    assert (tmp_path / "run" / "last.pt").read_bytes() == before  # nothing overwritten
    assert not (tmp_path / "y").exists() and not (tmp_path / "x").exists()


def test_checkpoint_of_another_model(cifar_dir, tmp_path):
    train(tiny_cfg(cifar_dir, epochs="1"), tmp_path / "run", log=lambda *_: None)
    state = checkpoint.load(tmp_path / "run" / "last.pt")
    state["arch"] = "resnet18"  # claims to be a ResNet18 but holds tiny-net weights
    checkpoint.save(state, tmp_path / "wrong.pt")
    with pytest.raises(UserError, match="does not fit model 'resnet18'"):
        from c100.evaluate import evaluate

        evaluate(tmp_path / "wrong.pt")
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(UserError, match="is not a readable c100 checkpoint"):
        checkpoint.load(tmp_path / "bad.pt")


def test_resume_refuses_config_changes(cifar_dir, tmp_path):
    def killer(line):
        if line.startswith("epoch   1"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny_cfg(cifar_dir, epochs="2"), tmp_path / "run", log=killer)
    with pytest.raises(UserError, match="--batch-size cannot change when resuming"):
        resume(tmp_path / "run", {"batch_size": "32"})  # --lr may (tests/test_faults.py)


def test_python_m_entry_point_and_no_traceback():
    r = subprocess.run([sys.executable, "-m", "c100", "train", "--epochs", "-1"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip() == "c100: error: --epochs must be positive, got -1"
    r = subprocess.run([sys.executable, "-m", "c100", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "train" in r.stdout and "evaluate" in r.stdout


def test_plot_curves_of_a_run_validated_only_at_the_end(tmp_path):
    """--eval-every 0 (cpu-fast) leaves the val cells of all but the last epoch empty: the curves
    draw the one validated epoch, and the title says the clock, not the --epochs cap, ended training."""
    from c100.plots import _figure, curves_title, plot_curves, read_metrics

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text(
        "epoch,lr,res,train_loss,train_acc,val_loss,val_acc,epoch_s,images_per_s,clock_s,eval_s\n"
        "1,0.29,16,3.65,0.17,,,442.8,101.6,442.8,0\n"
        "2,0.20,16,3.04,0.31,,,401.4,112.0,844.2,0\n"
        "3,0.0001,24,2.33,0.52,1.85,0.521,105.7,57.2,1690.4,21.8\n")
    (run / "config.yaml").write_text("model: resnet18\noptimizer: sgd\nlr: 0.4\nbatch_size: 64\nepochs: 1000\n"
                                     "time_budget: 1690\n")
    m = read_metrics(run)
    fig = _figure(m, "t")
    val_lines = [ln for ax in fig.axes[:2] for ln in ax.get_lines() if ln.get_label() == "validation"]
    assert [list(ln.get_xdata()) for ln in val_lines] == [[3.0], [3.0]]
    assert [list(ln.get_ydata()) for ln in val_lines] == [[52.1], [1.85]]
    assert curves_title(run, m) == "run: resnet18, sgd lr 0.4, batch 64, 3 epochs in a 1690 s clock budget"
    plot_curves(run)  # used to fail on the empty cells
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_curves(cifar_dir, tmp_path, capsys):
    train(tiny_cfg(cifar_dir, epochs="2"), tmp_path / "run", log=lambda *_: None)
    assert main(["plot", str(tmp_path / "run")]) == 0
    png, svg = (tmp_path / "run" / "curves.png"), (tmp_path / "run" / "curves.svg")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and b"<svg" in svg.read_bytes()[:1000]
    import struct

    width, height = struct.unpack(">II", png.read_bytes()[16:24])
    assert (width, height) == (1680, 504)
    assert main(["plot", str(tmp_path / "nothing")]) == 2
    assert "metrics.csv not found" in capsys.readouterr().err


def test_compiled_training_saves_a_plain_checkpoint(cifar_dir, tmp_path):
    """--compile trains through torch.compile (~30 s of compilation on 2 cores) and still saves the
    unwrapped model: no `_orig_mod.` prefixes, loadable into a fresh model."""
    trainer = train(tiny_cfg(cifar_dir, epochs="1", compile=True), tmp_path / "run", log=lambda *_: None)
    assert trainer.forward is not trainer.model  # really compiled
    # measured apart from training: the clock is the epochs' own training time, compilation not in it
    epochs_s = sum(r["train_s"] for r in trainer.history)  # rounded to 6 decimals in the history
    assert trainer.compile_s > 0 and trainer.clock == pytest.approx(epochs_s, abs=1e-5)
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert not any("_orig_mod" in k for k in state["model"])
    from c100.models import create_model

    create_model("tiny-net").load_state_dict(state["model"])
    assert trainer.history[-1]["train_loss"] > 0


def test_whiten_stem_run_starts_whitened(cifar_dir, tmp_path):
    from c100.models.whiten import whitening_filters

    cfg = tiny_cfg(cifar_dir, whiten_stem="true", epochs="1")
    trainer = train(cfg, tmp_path / "w", log=lambda *_: None)
    assert trainer.cfg.whiten_stem and checkpoint.load(tmp_path / "w" / "last.pt")["config"]["whiten_stem"]
    fresh = build_trainer(cfg, tmp_path / "fresh", log=lambda *_: None)  # before any step: the whitened init
    images = Normalize(cfg.normalize, torch.device("cpu"))(fresh.data.train_x[:WHITEN_IMAGES])
    assert torch.allclose(fresh.model[0].weight, whitening_filters(images)[:8])


def test_freeze_stem_keeps_the_whitened_filters(cifar_dir, tmp_path):
    cfg = tiny_cfg(cifar_dir, whiten_stem="true", freeze_stem="true", epochs="1")
    start = build_trainer(cfg, tmp_path / "fresh", log=lambda *_: None).model.state_dict()
    end = checkpoint.load(train(cfg, tmp_path / "f", log=lambda *_: None).run_dir / "last.pt")["model"]
    assert torch.equal(end["0.weight"], start["0.weight"])  # weight decay did not shrink it either
    moved = [k for k in start if k.endswith("weight") and not torch.equal(end[k], start[k])]
    assert moved and "0.weight" not in moved


def test_init_from_starts_at_the_source_weights_and_fine_tunes(cifar_dir, tiny_run, tmp_path):
    source = checkpoint.load(tiny_run / "last.pt")["model"]
    cfg = tiny_cfg(cifar_dir, init_from=str(tiny_run), whiten_stem="true", epochs="1", lr="0.01")
    start = build_trainer(cfg, tmp_path / "fresh", log=lambda *_: None).model.state_dict()
    assert all(torch.equal(start[k], source[k]) for k in source)  # every tensor, BN statistics included
    end = checkpoint.load(train(cfg, tmp_path / "ft", log=lambda *_: None).run_dir / "last.pt")
    assert end["config"]["init_from"] == str(tiny_run)
    assert not torch.equal(end["model"]["0.weight"], source["0.weight"])  # it trained from there


def test_init_from_refuses_another_split_or_architecture(cifar_dir, tiny_run, tmp_path, capsys):
    cases = [({"seed": "3"}, "pass --seed 0 --val-size 100"),
             ({"val_size": "50"}, "pass --seed 0 --val-size 100"),
             ({"model": "resnet18"}, "is a tiny-net, not a resnet18; pass --model tiny-net")]
    for flags, message in cases:
        with pytest.raises(UserError, match=message):
            build_trainer(tiny_cfg(cifar_dir, init_from=str(tiny_run), **flags), tmp_path / "x", log=print)
    argv = ["train", "--model", "tiny-net", "--data-dir", str(cifar_dir), "--no-download", "--no-check-size",
            "--val-size", "100", "--init-from", str(tmp_path / "missing"), "--out", str(tmp_path / "y")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("c100: error:") and "\n" not in err and "missing" in err
    assert not (tmp_path / "y").exists()


def test_a_fine_tune_resumes_without_its_source(cifar_dir, tiny_run, tmp_path):
    import shutil

    source = tmp_path / "source"
    shutil.copytree(tiny_run, source)
    cfg = tiny_cfg(cifar_dir, init_from=str(source), epochs="2")
    straight = train(cfg, tmp_path / "straight", log=lambda *_: None)

    def killer(line):
        if line.startswith("epoch   1"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "killed", log=killer)
    shutil.rmtree(source)  # its checkpoint holds the weights: the source is not needed any more
    resumed = resume(tmp_path / "killed", log=lambda *_: None)
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
