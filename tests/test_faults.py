"""Reliability (issue 21): kill it, corrupt it, poison it, fill its disk.

1. Real kills: `c100 train` in a subprocess, SIGKILLed mid-epoch and in the middle of writing a checkpoint,
   several times in a row, then resumed to the end: bit for bit the straight run's weights (CPU, a step
   schedule), or under --time-budget a clock that carries over to the budget; no temp file left.
2. Bad checkpoint and weight files: one line naming the file and the fault, exit 2, nothing executed.
3. A diverging loss stops training at once; the run continues from its last good checkpoint with --lr.
4. An output folder that cannot be written, a disk that fills during a checkpoint write.

The kills land at chosen moments, not after fixed sleeps: this file doubles as the launcher of those runs
(`python tests/test_faults.py HOOK SIGNAL_FILE c100-args...`), which pauses the run at the hook's moment and
creates SIGNAL_FILE; the test waits for that file (with a timeout) and kills the process.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from c100 import UserError, checkpoint, lock
from c100 import train as train_mod
from c100.cli import main
from c100.schedule import lr_factor
from c100.train import Diverged, build_trainer, train
from conftest import tiny_cfg

HERE = Path(__file__).resolve().parent
WAIT_S = 120  # the longest any wait of these tests may take (a loaded 2-core machine); they take seconds
# 1,000 synthetic images, 100 held out: 900 at batch 64 make 14 steps an epoch
STEPS_PER_EPOCH = 14


# -- the launcher: a `c100` run that pauses where a kill should land ---------------------------------------


def _launch(argv: list[str]) -> int:
    """HOOK SIGNAL_FILE c100-args...; HOOK is one of
    none                  run as `c100` does;
    step:K                pause after this process's K-th training step;
    write:NAME:K:FRACTION pause in this process's K-th write of NAME (last.pt, best.pt) once FRACTION of its
                          bytes are in the temp file (1 = all of them, just before the os.replace);
    fsize:K:BYTES         after this process's K-th checkpoint save, no file may grow past BYTES: the disk
                          "fills" during the next write (RLIMIT_FSIZE; Python ignores SIGXFSZ, so write()
                          fails with EFBIG);
    hang:K:RANK           under torchrun, the process of rank RANK hangs (sleeps, alive) after its K-th step.
    A pause creates SIGNAL_FILE and sleeps until the test kills the process."""
    hook, signal_file, args = argv[0], Path(argv[1]), argv[2:]
    kind, *params = hook.split(":")

    def pause() -> None:
        signal_file.write_text(str(os.getpid()))
        time.sleep(WAIT_S)
        os._exit(3)  # never killed: the test failed; do not carry on as if nothing happened

    if kind == "step":
        real_step, calls = train_mod.Trainer.train_step, [0]

        def train_step(self, *args):
            out = real_step(self, *args)
            calls[0] += 1
            if calls[0] == int(params[0]):
                pause()
            return out

        train_mod.Trainer.train_step = train_step
    elif kind == "write":
        name, k, fraction = params[0], int(params[1]), float(params[2])
        real_atomic, calls = checkpoint._atomic, [0]

        def atomic(path, write):
            if Path(path).name != name:
                return real_atomic(path, write)
            calls[0] += 1
            if calls[0] != k:
                return real_atomic(path, write)

            def slow_write(f):
                buf = io.BytesIO()
                write(buf)
                data = buf.getvalue()
                f.write(data[:int(len(data) * fraction)])
                f.flush()
                pause()

            return real_atomic(path, slow_write)

        checkpoint._atomic = atomic
    elif kind == "fsize":
        real_save, calls = train_mod.Trainer.save, [0]

        def save(self, finished):
            real_save(self, finished)
            calls[0] += 1
            if calls[0] == int(params[0]):
                hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
                resource.setrlimit(resource.RLIMIT_FSIZE, (int(params[1]), hard))

        train_mod.Trainer.save = save
    elif kind == "hang":
        real_step, calls = train_mod.Trainer.train_step, [0]

        def train_step(self, *args):
            out = real_step(self, *args)
            calls[0] += 1
            if calls[0] == int(params[0]) and os.environ.get("RANK") == params[1]:
                time.sleep(2 * WAIT_S)  # hangs, never dies: only the others' timeout ends the job before the
                os._exit(3)  # test's own timeout does
            return out

        train_mod.Trainer.train_step = train_step
    elif kind != "none":
        raise SystemExit(f"unknown hook {hook}")
    return main(args)


# -- helpers for the kill tests ----------------------------------------------------------------------------


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1")  # two runs side by side on two cores: a thread each


def _start(hook: str, args: list[str], tmp_path: Path, tag: str) -> tuple[subprocess.Popen, Path, Path]:
    signal_file, log = tmp_path / f"{tag}.ready", tmp_path / f"{tag}.log"
    with open(log, "w") as out:
        p = subprocess.Popen([sys.executable, str(HERE / "test_faults.py"), hook, str(signal_file), *args],
                             stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=_env())
    return p, signal_file, log


def _kill_at(hook: str, args: list[str], tmp_path: Path, tag: str) -> str:
    """Run until the hook pauses the run, then SIGKILL it; returns what it printed."""
    p, signal_file, log = _start(hook, args, tmp_path, tag)
    deadline = time.monotonic() + WAIT_S
    try:
        while not signal_file.exists():
            assert p.poll() is None, f"{tag} exited ({p.returncode}) before {hook}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"{tag} never reached {hook}:\n{log.read_text()[-3000:]}"
            time.sleep(0.02)
    finally:
        p.kill()  # SIGKILL
        p.wait(timeout=WAIT_S)
    assert p.returncode == -signal.SIGKILL
    return log.read_text()


def _finish(p: subprocess.Popen, log: Path, tag: str) -> str:
    p.wait(timeout=WAIT_S)
    assert p.returncode == 0, f"{tag} failed ({p.returncode}):\n{log.read_text()[-3000:]}"
    return log.read_text()


def _temps(run: Path) -> list[str]:
    """Temp files left in a run folder (not the lock's file, which a kill leaves and the next writer takes)."""
    return sorted(p.name for p in run.iterdir() if p.name.startswith(".") and p.name != lock.LOCK_NAME)


def _readable(run: Path) -> dict:
    """last.pt and best.pt, where they exist, load as checkpoints (plain tensors, weights_only); their epochs."""
    epochs = {}
    for name in ("last.pt", "best.pt"):
        if (run / name).exists():
            epochs[name] = checkpoint.load(run / name)["epoch"]
            torch.load(run / name, weights_only=True)
    return epochs


def _config_file(tmp_path: Path, cifar_dir: Path, **kw) -> Path:
    values = {"model": "tiny-net", "data_dir": str(cifar_dir), "download": False, "check_size": False,
              "val_size": 100, "epochs": 5, "batch_size": 64, "precision": "fp32", "threads": 1, "device": "cpu",
              "ema": 0.9, "label_smoothing": 0.1, "cutout": 8, "alt_flip": True, **kw}
    path = tmp_path / "config.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in values.items()))
    return path


def _strip(history: list[dict]) -> list[dict]:
    timings = ("epoch_s", "train_s", "images_per_s", "clock_s", "eval_s")
    return [{k: v for k, v in row.items() if k not in timings} for row in history]


# -- 1. real kills -----------------------------------------------------------------------------------------


def _resume_here(run: Path) -> None:
    """`c100 train --resume RUN` in this process (no torch import to wait for); the thread count it sets
    (the run's --threads 1, as in its killed processes) is put back after."""
    threads = torch.get_num_threads()
    try:
        assert main(["train", "--resume", str(run)]) == 0
    finally:
        torch.set_num_threads(threads)


def test_sigkill_mid_write_and_mid_epoch_then_resume_equals_straight_run(cifar_dir, tmp_path):
    cfg = _config_file(tmp_path, cifar_dir)
    run, straight = tmp_path / "killed", tmp_path / "straight"
    # the uninterrupted run, alongside (one thread each)
    ref, _, ref_log = _start("none", ["train", "--config", str(cfg), "--out", str(straight)], tmp_path, "straight")
    resume = ["train", "--resume", str(run)]

    # 1: killed half-way through writing the first best.pt, before any last.pt exists
    _kill_at("write:best.pt:1:0.5", ["train", "--config", str(cfg), "--out", str(run)], tmp_path, "k1")
    first_temp = _temps(run)
    assert len(first_temp) == 1 and first_temp[0].startswith(".best.pt.")  # the kill landed mid-write
    assert _readable(run) == {}
    # 2: the resume starts it again (no checkpoint yet) and removes that temp file; killed mid-epoch, at
    # step 20 (in epoch 2)
    out = _kill_at("step:20", resume, tmp_path, "k2")
    assert "training it from the start" in out and f"removed {first_temp[0]}" in out
    assert _readable(run) == {"last.pt": 1, "best.pt": 1} and _temps(run) == []
    # 3: resumed at epoch 1; killed with epoch 3's last.pt written in full to its temp file, just before
    # the os.replace
    out = _kill_at("write:last.pt:2:1", resume, tmp_path, "k3")
    assert "resuming" in out and "at epoch 1/5" in out
    assert _readable(run)["last.pt"] == 2 and len(_temps(run)) == 1
    # 4: to the end
    _resume_here(run)
    _finish(ref, ref_log, "straight")

    assert _temps(run) == [] and _temps(straight) == []
    a, b = checkpoint.load(straight / "last.pt"), checkpoint.load(run / "last.pt")
    assert b["finished"] and b["epoch"] == 5 and b["scheduler"]["step"] == 5 * STEPS_PER_EPOCH
    for name in ("model", "ema"):
        for k, v in a[name].items():
            assert torch.equal(v, b[name][k]), f"{name}.{k} differs from the straight run's"
    best_a, best_b = checkpoint.load(straight / "best.pt"), checkpoint.load(run / "best.pt")
    assert best_a["epoch"] == best_b["epoch"] and all(torch.equal(v, best_b["model"][k])
                                                      for k, v in best_a["model"].items())
    assert _strip(a["history"]) == _strip(b["history"])
    assert [r["epoch"] for r in b["resumes"]] == [0, 1, 2]  # each resume recorded; none changed the config
    assert not any("changed" in r for r in b["resumes"])
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 1 + 5


def test_sigkill_under_a_time_budget_keeps_the_clock(cifar_dir, tmp_path):
    budget = 3.0
    # 320 images: 5 steps an epoch, so the kills land early in the budget even on a busy machine
    cfg = _config_file(tmp_path, cifar_dir, epochs=1000, time_budget=budget, eval_every=0, train_size=320)
    run = tmp_path / "run"
    _kill_at("step:8", ["train", "--config", str(cfg), "--out", str(run)], tmp_path, "k1")  # in epoch 2
    after1 = checkpoint.load(run / "last.pt")
    assert after1["epoch"] == 1 and 0 < after1["clock_s"] < budget
    # resumed at epoch 1: epoch 2 saved, killed half-way through writing epoch 3's last.pt
    _kill_at("write:last.pt:2:0.5", ["train", "--resume", str(run)], tmp_path, "k2")
    after2 = checkpoint.load(run / "last.pt")
    assert after2["epoch"] == 2 and after2["clock_s"] > after1["clock_s"] and len(_temps(run)) == 1
    _resume_here(run)

    end = checkpoint.load(run / "last.pt")
    h = end["history"]
    assert end["finished"] and budget <= end["clock_s"] < budget + 2  # ended on its budget
    assert [r["epoch"] for r in h] == list(range(1, len(h) + 1)) and len(h) < 1000  # no epoch lost or doubled
    clocks = [r["clock_s"] for r in h]
    assert clocks == sorted(clocks) and clocks[0] > 0  # carried over, never restarted from 0
    assert h[:2] == after2["history"]  # the saved epochs as they were
    assert h[-1]["lr"] < 0.1 * 0.2  # the schedule decayed with the clock, not with the epochs cap
    assert [r["epoch"] for r in end["resumes"]] == [1, 2]
    assert [r["clock_s"] for r in end["resumes"]] == [round(after1["clock_s"], 3), round(after2["clock_s"], 3)]
    assert _temps(run) == [] and {"last.pt", "best.pt"} <= set(_readable(run))


# -- 2. bad checkpoints and weights ------------------------------------------------------------------------


class _RunsCode:
    """Unpickling this calls `fn(*args)`: a pickle that would run code."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _bad_pt(kind: str, good: Path, path: Path, marker: Path) -> str:
    """Write a bad .pt of `kind` to `path`; returns a fragment the error must contain."""
    raw = good.read_bytes()
    state = checkpoint.load(good)
    state["finished"] = False  # so that resuming it gets as far as the fault
    if kind == "truncated":
        path.write_bytes(raw[:len(raw) // 2])
        return "is truncated"
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).integers(1, 120, 4096, dtype=np.uint8).tobytes())
        return "not a PyTorch checkpoint"
    if kind == "empty":
        path.write_bytes(b"")
        return "the file is empty"
    if kind == "no-classes":
        del state["classes"]
        torch.save(state, path)
        return "lacks 'classes'"
    if kind == "no-model":
        del state["model"]
        torch.save(state, path)
        return "no model/config inside"
    if kind == "plain-state-dict":  # a bare state_dict, as other tools save
        torch.save(state["model"], path)
        return "no model/config inside"
    if kind == "other-arch":  # says ResNet18, holds tiny-net weights
        state["arch"], state["config"]["model"] = "resnet18", "resnet18"
        torch.save(state, path)
        return "does not fit model 'resnet18'"
    if kind == "other-classes":  # 10 classes named, 100-class weights
        state["classes"], state["fine_to_coarse"] = state["classes"][:10], state["fine_to_coarse"][:10]
        torch.save(state, path)
        return "is 100x16 in the file but 10x16 in the model"
    if kind == "nan-weights":
        for v in state["model"].values():
            if v.is_floating_point():
                v.fill_(float("nan"))
        state["ema"] = state["model"] if state.get("ema") is not None else None
        torch.save(state, path)
        return "non-finite weights"
    if kind == "pickle-system":  # plain pickle, a __reduce__ that runs a shell command
        path.write_bytes(pickle.dumps({"model": _RunsCode(os.system, f"touch {marker}"), "config": {}}, protocol=2))
        return "refused unread"
    if kind == "pickle-open-v4":
        path.write_bytes(pickle.dumps({"model": _RunsCode(open, str(marker), "w")}, protocol=4))
        return "refused unread"
    if kind == "torch-save-open":  # a real torch zip archive whose data.pkl would create the marker
        torch.save({"model": _RunsCode(open, str(marker), "w"), "config": {}}, path)
        return "refused unread"
    raise AssertionError(kind)


RESUMABLE_FAULTS = {"no-classes", "other-classes"}  # training needs neither the class names nor their count
PT_FAULTS = ["truncated", "random", "empty", "no-classes", "no-model", "plain-state-dict", "other-arch",
             "other-classes", "nan-weights", "pickle-system", "pickle-open-v4", "torch-save-open"]


def _one_line_error(argv: list[str], capsys) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, (argv, rc, err)
    assert err.startswith("c100: error: ") and "\n" not in err, (argv, err)
    return err


@pytest.fixture
def image(tmp_path) -> Path:
    from PIL import Image

    path = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(path)
    return path


@pytest.mark.parametrize("kind", PT_FAULTS)
def test_bad_checkpoint_is_one_line_and_runs_nothing(kind, tiny_run, tmp_path, image, capsys):
    marker = tmp_path / "code-ran"
    bad = tmp_path / "bad.pt"
    want = _bad_pt(kind, tiny_run / "last.pt", bad, marker)
    for argv in (["evaluate", str(bad)], ["predict", str(image), "-w", str(bad)]):
        err = _one_line_error(argv, capsys)
        assert str(bad) in err and want in err, (argv, err)
    if kind in RESUMABLE_FAULTS:
        return
    # the same file as a run's last.pt, resumed
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(bad, run / "last.pt")
    shutil.copy(tiny_run / "config.yaml", run / "config.yaml")
    err = _one_line_error(["train", "--resume", str(run)], capsys)
    assert str(run / "last.pt") in err, err
    assert not marker.exists()  # nothing in the files ran


def test_resume_needs_the_training_state(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    state = checkpoint.load(tiny_run / "last.pt")
    state["finished"] = False
    del state["optimizer"]
    torch.save(state, run / "last.pt")
    err = _one_line_error(["train", "--resume", str(run)], capsys)
    assert f"{run / 'last.pt'} cannot be resumed: its 'optimizer' is missing" in err


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("export") / "tiny.safetensors"
    assert main(["export", str(tiny_run), "--format", "safetensors", "--out", str(path)]) == 0
    return path


def _bad_safetensors(kind: str, good: Path, path: Path) -> str:
    raw, side = good.read_bytes(), json.loads(good.with_name(good.name + ".json").read_text())
    sidecar = path.with_name(path.name + ".json")
    text = json.dumps(side)
    if kind == "truncated":
        raw = raw[:len(raw) // 2]
        want = "not a readable safetensors file"
    elif kind == "random":
        raw = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
        want = "not a readable safetensors file"
    elif kind == "no-sidecar":
        text, want = None, f"{sidecar} not found"
    elif kind == "garbled-sidecar":
        text, want = text[:40], f"{sidecar} is not a c100 export sidecar"
    elif kind == "sidecar-without-keys":
        text, want = json.dumps({"format": side["format"]}), f"{sidecar}: no 'arch'"
    elif kind == "sidecar-unknown-arch":
        text, want = json.dumps({**side, "arch": "resnet99"}), "arch 'resnet99' is not a registered model"
    elif kind == "sidecar-other-arch":
        text, want = json.dumps({**side, "arch": "resnet18"}), "holds the weights of a tiny-net but its sidecar"
    elif kind == "sidecar-names-for-other-count":
        text, want = json.dumps({**side, "num_classes": 10}), "100 class names for num_classes 10"
    elif kind == "sidecar-other-class-count":  # a consistent 10-class card over 100-class weights
        text = json.dumps({**side, "num_classes": 10, "classes": side["classes"][:10],
                           "fine_to_coarse": side["fine_to_coarse"][:10]})
        want = "with 10 classes, as its sidecar"
    else:
        raise AssertionError(kind)
    path.write_bytes(raw)
    if text is not None:
        sidecar.write_text(text)
    return want


SAFETENSORS_FAULTS = ["truncated", "random", "no-sidecar", "garbled-sidecar", "sidecar-without-keys",
                      "sidecar-unknown-arch", "sidecar-other-arch", "sidecar-names-for-other-count",
                      "sidecar-other-class-count"]


@pytest.mark.parametrize("kind", SAFETENSORS_FAULTS)
def test_bad_safetensors_or_sidecar_is_one_line(kind, exported, tmp_path, image, capsys):
    bad = tmp_path / "bad.safetensors"
    want = _bad_safetensors(kind, exported, bad)
    for argv in (["evaluate", str(bad)], ["predict", str(image), "-w", str(bad)]):
        err = _one_line_error(argv, capsys)
        assert str(bad) in err and want in err, (argv, err)


# -- 3. numerical faults -----------------------------------------------------------------------------------


def _poison_loss(monkeypatch, at_call: int) -> None:
    """The training loss turns NaN at its `at_call`-th computation (evaluation losses are left alone)."""
    real, calls, inside = torch.nn.functional.cross_entropy, [0], [False]

    def cross_entropy(logits, y, *a, **kw):
        if inside[0]:  # torch's function modes call it again by its module name: count one call once
            return real(logits, y, *a, **kw)
        inside[0] = True
        try:
            out = real(logits, y, *a, **kw)
        finally:
            inside[0] = False
        if logits.requires_grad:
            calls[0] += 1
            if calls[0] >= at_call:
                out = out * float("nan")
        return out

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", cross_entropy)


def _cli_flags(cifar_dir: Path, **kw) -> list[str]:
    flags = {"model": "tiny-net", "data-dir": str(cifar_dir), "val-size": "100", "epochs": "2", "batch-size": "64",
             "precision": "fp32", "device": "cpu", **kw}
    return [f"--{k}={v}" for k, v in flags.items()] + ["--no-download", "--no-check-size"]


def test_lr_1e6_stops_at_once_and_resumes_with_a_lower_lr(cifar_dir, tmp_path, capsys):
    run = tmp_path / "run"
    err = _one_line_error(["train", *_cli_flags(cifar_dir, lr="1e6"), "--out", str(run)], capsys)
    assert "training diverged: the loss became NaN or infinite in epoch 1 at step" in err
    assert "learning rate is likely too high" in err and f"--resume {run} --lr 100000" in err
    assert not (run / "last.pt").exists() and not (run / "best.pt").exists()  # no poisoned weights saved
    assert main(["train", "--resume", str(run), "--lr", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "training it from the start" in out and "lr 1000000.0 -> 0.1 from here on" in out
    state = checkpoint.load(run / "last.pt")
    assert state["finished"] and all(torch.isfinite(v).all() for v in state["model"].values())
    assert state["config"]["lr"] == 0.1
    assert state["resumes"][0]["changed"] == {"lr": [1e6, 0.1]} and state["resumes"][0]["epoch"] == 0
    header = "# changed on resume at epoch 0 (step 0): lr 1000000.0 -> 0.1\n"
    assert (run / "config.yaml").read_text().startswith(header)


def test_nan_mid_run_keeps_the_last_good_checkpoint_and_resumes_with_lower_lr(cifar_dir, tmp_path, capsys,
                                                                               monkeypatch):
    run = tmp_path / "run"
    saves = []
    real_save = checkpoint.save
    monkeypatch.setattr(checkpoint, "save", lambda state, path: (saves.append(Path(path).name), real_save(state, path)))
    bad_step = STEPS_PER_EPOCH + 5  # in epoch 2
    with monkeypatch.context() as m:
        _poison_loss(m, bad_step)
        err = _one_line_error(["train", *_cli_flags(cifar_dir), "--out", str(run)], capsys)
    assert f"in epoch 2 at step {bad_step}, lr " in err and "last.pt still holds epoch 1" in err
    assert saves == ["best.pt", "last.pt"]  # epoch 1's, nothing after the bad step
    good = checkpoint.load(run / "last.pt")
    assert good["epoch"] == 1 and all(torch.isfinite(v).all() for v in good["model"].values())
    assert checkpoint.load(run / "best.pt")["epoch"] == 1
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 2

    assert main(["train", "--resume", str(run), "--lr", "0.05"]) == 0
    assert "resuming" in capsys.readouterr().out
    end = checkpoint.load(run / "last.pt")
    assert end["finished"] and end["epoch"] == 2
    assert all(torch.isfinite(v).all() for name in ("model", "ema") if end[name] for v in end[name].values())
    assert end["config"]["lr"] == 0.05 and end["resumes"] == [
        {"epoch": 1, "step": STEPS_PER_EPOCH, "clock_s": round(good["clock_s"], 3), "changed": {"lr": [0.1, 0.05]}}]
    cfg = tiny_cfg(cifar_dir, epochs="2")
    total = 2 * STEPS_PER_EPOCH
    lrs = [r["lr"] for r in end["history"]]  # each epoch's last lr: epoch 1 at 0.1, then the schedule at 0.05
    assert lrs[0] == pytest.approx(0.1 * lr_factor(cfg, STEPS_PER_EPOCH - 1, total, STEPS_PER_EPOCH), abs=1e-6)
    assert lrs[1] == pytest.approx(0.05 * lr_factor(cfg, 2 * STEPS_PER_EPOCH - 1, total, STEPS_PER_EPOCH), abs=1e-6)
    config_yaml = (run / "config.yaml").read_text()
    assert config_yaml.startswith("# changed on resume at epoch 1 (step 14): lr 0.1 -> 0.05\n")
    assert "\nlr: 0.05\n" in config_yaml


def test_divergence_checked_every_n_steps_where_the_device_runs_ahead(cifar_dir, tmp_path, monkeypatch):
    """The GPU path (a check every N steps, on the accumulated loss) on the CPU: it still stops in the epoch."""
    trainer = build_trainer(tiny_cfg(cifar_dir), tmp_path / "run", log=lambda *_: None)
    trainer.check_every = 4
    _poison_loss(monkeypatch, 3)
    with pytest.raises(Diverged, match=r"in epoch 1 at step 4 \(checked every 4\)"):
        trainer.fit()
    assert not (tmp_path / "run").exists()


def test_nan_weights_with_a_finite_loss_are_not_saved(cifar_dir, tmp_path, monkeypatch):
    real_step = train_mod.Trainer.train_step

    def train_step(self, *args):  # the last step of epoch 1 leaves a NaN in the weights
        out = real_step(self, *args)
        if self.step == STEPS_PER_EPOCH - 1:
            with torch.no_grad():
                self.model[0].weight[0, 0, 0, 0] = float("nan")
        return out

    monkeypatch.setattr(train_mod.Trainer, "train_step", train_step)
    with pytest.raises(Diverged, match="the weights became NaN or infinite in epoch 1"):
        train(tiny_cfg(cifar_dir), tmp_path / "run", log=lambda *_: None)
    assert not (tmp_path / "run" / "last.pt").exists() and not (tmp_path / "run" / "best.pt").exists()


# -- the GPU path's first failures, rehearsed on the CPU (issue 39) ------------------------------------------


def test_out_of_memory_mid_epoch_is_one_line_and_the_run_resumes(cifar_dir, tmp_path, capsys, monkeypatch):
    """torch.OutOfMemoryError in epoch 2's 6th step (as a GPU raises it): one line naming the batch size and what
    to try; last.pt keeps epoch 1 whole, and --resume (with room again) finishes the run."""
    run, real_step, calls = tmp_path / "run", train_mod.Trainer.train_step, [0]

    def train_step(self, *args):
        calls[0] += 1
        if calls[0] == STEPS_PER_EPOCH + 6:
            raise train_mod._OOM("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.15 GiB total capacity)")
        return real_step(self, *args)

    monkeypatch.setattr(train_mod.Trainer, "train_step", train_step)
    err = _one_line_error(["train", *_cli_flags(cifar_dir, epochs="3"), "--out", str(run)], capsys)
    assert (f"out of memory on {checkpoint.device_name(torch.device('cpu'))} at batch size 64, in epoch 2 at step "
            f"{STEPS_PER_EPOCH + 5}; last.pt holds epoch 1: start again with a smaller --batch-size (e.g. 32)") in err
    assert f"continue with `c100 train --resume {run}`" in err
    assert _readable(run) == {"last.pt": 1, "best.pt": 1} and _temps(run) == []
    monkeypatch.setattr(train_mod.Trainer, "train_step", real_step)
    _resume_here(run)
    assert checkpoint.load(run / "last.pt")["finished"] and checkpoint.load(run / "last.pt")["epoch"] == 3


def test_cpu_allocator_failure_is_out_of_memory_too():
    assert train_mod.is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: "
                                                   "can't allocate memory: you tried to allocate 68719476736 bytes"))
    assert train_mod.is_out_of_memory(train_mod._OOM("CUDA out of memory"))
    assert not train_mod.is_out_of_memory(RuntimeError("shapes cannot be multiplied"))


def test_compile_failure_falls_back_to_eager_with_a_warning(cifar_dir, tmp_path, capsys, monkeypatch):
    """A compiler that fails at the first compiled step (no C++ compiler, an inductor bug): the run warns once and
    trains in eager mode, to the very weights of a run that never asked to compile."""
    eager = train(tiny_cfg(cifar_dir, epochs="2"), tmp_path / "eager", log=lambda *_: None)

    def broken_compile(module, **kw):
        def compiled(*args):
            raise RuntimeError("InductorError: CppCompileError: C++ compile error\nno compiler found")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    fell_back = train(tiny_cfg(cifar_dir, epochs="2", compile=True), tmp_path / "run", log=lambda *_: None)
    err = capsys.readouterr().err
    assert ("c100: warning: torch.compile failed (RuntimeError: InductorError: CppCompileError: C++ compile error); "
            "training in eager mode") in err and err.count("torch.compile failed") == 1
    assert fell_back.forward is fell_back.ddp and fell_back.gemm_convs
    assert fell_back.model.training is True and len(fell_back.history) == 2
    for k, v in eager.model.state_dict().items():
        assert torch.equal(v, fell_back.model.state_dict()[k]), k


# -- 4. full disks and unwritable places -------------------------------------------------------------------


def test_out_that_cannot_be_a_folder(cifar_dir, tmp_path, capsys, monkeypatch):
    file = tmp_path / "a-file"
    file.write_text("x")
    flags = _cli_flags(cifar_dir, epochs="1")
    err = _one_line_error(["train", *flags, "--out", str(file / "run")], capsys)
    assert f"cannot create run folder {file / 'run'}: {file} is a file, not a folder" in err
    err = _one_line_error(["train", *flags, "--out", str(file)], capsys)
    assert f"--out {file} is a file, not a folder" in err
    assert file.read_text() == "x"
    monkeypatch.setattr(lock.os, "access", lambda *a: False)  # root writes anywhere: pretend read-only
    err = _one_line_error(["train", *flags, "--out", str(tmp_path / "ro" / "run")], capsys)
    assert f"{tmp_path} is not writable" in err and not (tmp_path / "ro").exists()


def test_disk_full_during_a_checkpoint_write(cifar_dir, tmp_path, capsys, monkeypatch):
    """ENOSPC half-way through epoch 2's first checkpoint write (in process, so it fails for sure)."""
    run = tmp_path / "run"
    real_save, calls = torch.save, [0]

    def save(obj, f, *a, **kw):
        calls[0] += 1
        if calls[0] <= 2:  # epoch 1: best.pt and last.pt
            return real_save(obj, f, *a, **kw)
        f.write(b"\0" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", save)
    err = _one_line_error(["train", *_cli_flags(cifar_dir), "--out", str(run)], capsys)
    assert f"cannot write {run}/" in err and "the disk is full" in err
    assert f"training stopped after epoch 2: make room, then continue with `c100 train --resume {run}`" in err
    assert _readable(run) == {"last.pt": 1, "best.pt": 1} and _temps(run) == []


def test_file_size_limit_hits_mid_write_in_a_real_process_then_resume(cifar_dir, tmp_path):
    """RLIMIT_FSIZE lowered after epoch 1's checkpoints: epoch 2's write fails in write() with EFBIG part-way
    through (a disk that fills), in a real process; the resume, with room again, finishes the run."""
    cfg = _config_file(tmp_path, cifar_dir, epochs=3)
    run = tmp_path / "run"
    args = [sys.executable, str(HERE / "test_faults.py"), "fsize:1:4096", str(tmp_path / "unused"), "train",
            "--config", str(cfg), "--out", str(run)]
    r = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=WAIT_S)
    errors = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(errors) == 1, r.stderr[-3000:]
    assert errors[0].startswith(f"c100: error: cannot write {run}/") and "(ulimit -f)" in errors[0]
    assert "training stopped after epoch 2" in errors[0]
    assert _readable(run) == {"last.pt": 1, "best.pt": 1} and _temps(run) == []
    _resume_here(run)  # room again
    assert checkpoint.load(run / "last.pt")["finished"] and _temps(run) == []


def test_stale_temp_files_of_other_names_are_left_alone(tmp_path):
    for name in (".last.pt.abcd1234.tmp", ".best.pt.x_y_z_12", ".metrics.csv.00000000.tmp", ".last.pt.short.tmp",
                 ".notes.txt.abcd1234.tmp", "last.pt", ".keep"):
        (tmp_path / name).write_text("x")
    removed = checkpoint.remove_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == [".best.pt.x_y_z_12", ".last.pt.abcd1234.tmp",
                                               ".metrics.csv.00000000.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".keep", ".last.pt.short.tmp", ".notes.txt.abcd1234.tmp",
                                                          "last.pt"]


def test_atomic_write_failure_is_a_user_error_and_leaves_no_temp(tmp_path):
    (tmp_path / "f.json").write_text("old")
    with pytest.raises(UserError, match="cannot write .*f.json: the disk is full; f.json was left as it was"):
        def write(f):
            f.write(b"new")
            raise OSError(errno.ENOSPC, "No space left on device")

        checkpoint._atomic(tmp_path / "f.json", write)
    assert (tmp_path / "f.json").read_text() == "old" and sorted(os.listdir(tmp_path)) == ["f.json"]


if __name__ == "__main__":
    raise SystemExit(_launch(sys.argv[1:]))
