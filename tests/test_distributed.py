"""torchrun + DistributedDataParallel on CPU (gloo): two processes train like one process with the same
global batch and seed, and write one set of files. The slow tests launch real torchrun processes (about
20 s each on two busy cores, most of it importing torch)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from c100 import UserError, distributed
from c100.augment import AugmentSpec, Normalize, epoch_generator, train_batches
from c100.config import resolve
from c100.schedule import peak_lr
from c100.train import train

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
# Measured (2 processes vs 1, sync_bn, 16 steps): 7.8e-5. One process with 2 threads instead of 1 differs
# from itself by 5.9e-5 (float sums in another order, grown by training); without sync_bn the
# difference is 2.9e-2. So 1e-3 passes the noise and catches a real difference.
TOLERANCE = 1e-3


def _torchrun(args: list[str], *, timeout: int = 240, **env_vars) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", **env_vars)  # 2 processes on 2 cores: a thread each
    return subprocess.run(TORCHRUN + args, capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=Path(__file__).parent)


def _config(tmp_path: Path, cifar_dir: Path, **kw) -> Path:
    values = {"model": "tiny-net", "data_dir": str(cifar_dir), "download": False, "val_size": 101,
              "train_size": 256, "epochs": 2, "batch_size": 32, "precision": "fp32", "threads": 1,
              "check_size": False, "sync_bn": True, "cutout": 8, "alt_flip": True, "ema": 0.9, "label_smoothing": 0.1,
              "grad_clip": 5.0, "l2": 1e-4, **kw}
    path = tmp_path / "config.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in values.items()))
    return path


def test_slices_of_a_global_batch_are_the_one_process_batch():
    images = torch.randint(0, 256, (100, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels, cpu = torch.arange(100), torch.device("cpu")
    spec, norm = AugmentSpec(translate=4, flip=True, cutout=8), Normalize("cifar100", cpu)

    def epoch(rank, world):
        return list(train_batches(images, labels, 32, spec, norm, epoch_generator(0, 3, cpu), rank=rank, world=world))

    whole, parts = epoch(0, 1), [epoch(r, 2) for r in range(2)]
    for (x, y), (x0, y0), (x1, y1) in zip(whole, *parts, strict=True):
        assert len(y0) == len(y1) == 16
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)  # bit for bit


def test_shards_and_local_batch(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    shards = []
    for r in range(2):
        monkeypatch.setenv("RANK", str(r))
        shards.append(distributed.shard(101))
    assert shards == [slice(0, 50), slice(50, 101)]  # every image once: no padding, no duplicate
    assert distributed.local_batch(32) == 16
    with pytest.raises(UserError, match="--batch-size 33 is the global batch and must split evenly over the 2"):
        distributed.local_batch(33)


def test_lr_scaling_is_explicit():
    flags = {"lr": "0.1", "batch_size": "512"}
    assert peak_lr(resolve("default", None, flags)) == 0.1  # lr_ref_batch 0: the lr as given
    assert peak_lr(resolve("default", None, {**flags, "lr_ref_batch": "128"})) == pytest.approx(0.4)


def test_two_processes_train_like_one(cifar_dir, tmp_path):
    cfg_file = _config(tmp_path, cifar_dir)
    run = tmp_path / "two"
    r = _torchrun(["run_c100.py", "train", "--config", str(cfg_file), "--out", str(run)])
    assert r.returncode == 0, r.stderr[-3000:]
    # in this process: train() leaves the thread count (a process-wide setting) as it is
    one = train(resolve("default", str(cfg_file), {}), tmp_path / "one", log=lambda *_: None)

    two = torch.load(run / "last.pt", weights_only=True)
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in two["model"])  # saved unwrapped
    for name, ref in (("model", one.model), ("ema", one.ema.model)):
        assert two[name].keys() == ref.state_dict().keys()  # SyncBatchNorm keeps BatchNorm's keys
        for k, v in ref.state_dict().items():
            diff = (v.double() - two[name][k].double()).abs().max().item()
            assert diff < TOLERANCE, f"{name}.{k} differs by {diff:.3g}"
    hist = two["history"]
    assert [h["epoch"] for h in hist] == [h["epoch"] for h in one.history] == [1, 2]
    for h, o in zip(hist, one.history, strict=True):
        assert h["lr"] == o["lr"] and h["train_loss"] == pytest.approx(o["train_loss"], rel=1e-4)
        assert h["val_loss"] == pytest.approx(o["val_loss"], rel=1e-4) and abs(h["val_acc"] - o["val_acc"]) <= 1 / 101
        assert abs(h["val_acc"] * 101 - round(h["val_acc"] * 101)) < 1e-3  # counted over the 101 images
    # one set of files and logs: rank 1 wrote nothing and printed nothing
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.yaml", "env.json", "last.pt", "metrics.csv"]
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 3
    assert "x 2 processes" in r.stdout and r.stdout.count("epoch   1 ") == 1 and r.stdout.count("done:") == 1


def test_two_processes_choose_the_same_hard_examples_as_one(cifar_dir, tmp_path):
    """--keep-hardest: each process records its slice's losses; merged, both pick what one process picks."""
    cfg_file = _config(tmp_path, cifar_dir, epochs=3, keep_hardest=0.5, ema=0.0)
    r = _torchrun(["run_c100.py", "train", "--config", str(cfg_file), "--out", str(tmp_path / "two")])
    assert r.returncode == 0, r.stderr[-3000:]
    one = train(resolve("default", str(cfg_file), {}), tmp_path / "one", log=lambda *_: None)
    two = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    assert torch.allclose(two["example_losses"], one.hard.losses, rtol=1e-4)
    assert one.step == 8 + 4 + 4  # 256 images in batches of 32, then the hardest 128
    for k, v in one.model.state_dict().items():
        diff = (v.double() - two["model"][k].double()).abs().max().item()
        assert diff < TOLERANCE, f"{k} differs by {diff:.3g}"


def test_time_budget_stops_every_process_at_the_same_step(cifar_dir, tmp_path):
    """Each process would stop on its own clock a step apart and hang the other; they share the slowest."""
    cfg_file = _config(tmp_path, cifar_dir, epochs=1000, time_budget=1.5, eval_every=0, sync_bn=False)
    r = _torchrun(["run_c100.py", "train", "--config", str(cfg_file), "--out", str(tmp_path / "run")])
    assert r.returncode == 0, r.stderr[-3000:]
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["finished"] and state["clock_s"] >= 1.5 and len(state["history"]) < 1000


def test_channels_last_ddp_steps_without_the_grad_strides_warning(cifar_dir, tmp_path):
    """ResNet18 channels-last at 16 px: layer3/layer4's 1x1 downsample weights get their gradient from the GEMM
    path (maps of 4x4 and 2x2); it must come in the weight's exact strides, which DDP's bucket views share,
    or every process warns "Grad strides do not match bucket view strides" (and DDP copies it the slow way)."""
    cfg_file = _config(tmp_path, cifar_dir, model="resnet18", resolutions="[16]", train_size=64, val_size=0,
                       epochs=1, sync_bn=False, ema=0, cutout=0, l2=0)
    r = _torchrun(["run_c100.py", "train", "--config", str(cfg_file), "--out", str(tmp_path / "run")])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "channels_last: true" in (tmp_path / "run" / "config.yaml").read_text()
    assert "Grad strides do not match bucket view strides" not in r.stdout + r.stderr


def test_a_rank_that_hangs_is_caught_by_the_timeout(cifar_dir, tmp_path):
    """Rank 1 stops after its 3rd step without dying (torchrun sees nothing wrong): rank 0 waits C100_DIST_TIMEOUT
    seconds in the next collective, then says so in one line, and torchrun ends the job."""
    cfg_file = _config(tmp_path, cifar_dir, epochs=1, sync_bn=False)
    # uncaught, the job would outlast _torchrun's timeout (rank 1 hangs for 240 s) and fail there
    r = _torchrun(["test_faults.py", "hang:3:1", str(tmp_path / "unused"), "train", "--config", str(cfg_file), "--out",
                   str(tmp_path / "run")], C100_DIST_TIMEOUT="4")
    errors = [line for line in r.stderr.splitlines() if line.startswith("c100: error")]
    assert r.returncode != 0 and errors == [
        "c100: error: rank 0 waited 4 s for the other processes and gave up: one of them hangs (stuck in a data "
        "read, a device or a deadlock; its own output says where) or is gone; the last checkpoint is whole: "
        "`--resume` continues the run; where a step really takes longer, set C100_DIST_TIMEOUT (seconds)"], \
        r.stderr[-3000:]


def test_torchrun_module_command_and_one_line_error(tmp_path):
    """The command line of docs/distributed.md; an uneven global batch fails before any process waits."""
    r = _torchrun(["-m", "c100", "train", "--batch-size", "33", "--no-download", "--data-dir", str(tmp_path),
                   "--out", str(tmp_path / "run")], timeout=120)
    errors = [line for line in r.stderr.splitlines() if line.startswith("c100: error")]
    assert r.returncode != 0 and errors == [
        "c100: error: --batch-size 33 is the global batch and must split evenly over the 2 processes; use a "
        "multiple of 2 (e.g. 32)"], r.stderr[-3000:]
    assert not (tmp_path / "run").exists()
