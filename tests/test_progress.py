"""What training tells its user: the estimated training time, and TensorBoard scalars."""

import pytest

from c100.progress import TensorBoard, TimeEstimate, duration
from c100.train import train
from conftest import tiny_cfg


def _run_estimate(total, budget=0.0, on_cpu=True, resolutions=(), per_step=0.5, first=1, passes_on_clock=False):
    lines = []
    est = TimeEstimate(total, budget, on_cpu, list(resolutions), lines.append, passes_on_clock)
    for i in range(60):
        est.after_step(first + i, clock=(i + 1) * per_step)
    return lines


def test_the_estimate_comes_once_and_says_what_it_measured():
    lines = _run_estimate(total=1000, per_step=0.5)
    assert lines == ["estimated training time: 8 min (8 min to go, 0.500 s per step; validation passes come on top)"]
    assert duration(90) == "90 s" and duration(600) == "10 min" and duration(4 * 3600) == "4.0 h"


def test_hours_on_a_cpu_name_the_fast_preset():
    lines = _run_estimate(total=200 * 351, per_step=0.6)  # the default preset's 200 epochs at batch 128
    assert len(lines) == 1 and "estimated training time: 11.7 h" in lines[0]
    assert "over two hours on this CPU" in lines[0] and "--preset cpu-fast" in lines[0]
    assert "over two hours" not in _run_estimate(total=200 * 351, per_step=0.6, on_cpu=False)[0]  # a GPU: no hint


def test_budget_runs_and_resumed_runs():
    lines = _run_estimate(total=10**6, budget=600, per_step=0.25, resolutions=[16, 24])
    assert lines[0].startswith("training for the 10 min budget: about 2,400 steps in all at 0.250 s per step")
    assert "at the first resolution" in lines[0] and "share" not in lines[0]
    on_clock = _run_estimate(total=10**6, budget=600, per_step=0.25, passes_on_clock=True)[0]
    assert on_clock.startswith("training for the 10 min budget: at most 2,400 steps in all at 0.250 s per step")
    assert on_clock.endswith("; validation passes on the clock take their share")
    resumed = _run_estimate(total=1000, per_step=0.5, first=501)  # timed from where this session starts
    assert resumed and "0.500 s per step" in resumed[0]


def test_training_logs_the_estimate_and_tensorboard_scalars(cifar_dir, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is in the test extra")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    lines = []
    trainer = train(tiny_cfg(cifar_dir, epochs="4", train_size="704", batch_size="16", tensorboard=True),
                    tmp_path / "run", log=lines.append)  # 44 steps per epoch: the estimate comes in epoch 1
    assert sum(line.startswith("estimated training time:") for line in lines) == 1
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert {"loss/train", "loss/val", "accuracy/val", "lr"} <= set(events.Tags()["scalars"])
    val = [(e.step, round(e.value, 5)) for e in events.Scalars("accuracy/val")]
    assert val == [(h["epoch"], round(h["val_acc"], 5)) for h in trainer.history]


def test_tensorboard_missing_is_a_one_line_error(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_tensorboard(name, *a, **kw):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    from c100 import UserError

    with pytest.raises(UserError, match=r"--tensorboard needs the tensorboard package: pip install 'c100\[tensor"):
        TensorBoard(tmp_path)
