"""`c100 tune`: search-space validation, a tiny search end to end, pruning, and resuming a killed
study. Trials train the test-only tiny-net for 2-3 epochs on the synthetic data (about a second each)."""

import pytest
import yaml

pytest.importorskip("optuna")
import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from c100 import UserError  # noqa: E402
from c100.cli import main  # noqa: E402
from c100.config import resolve  # noqa: E402
from c100.tune import load_space, make_pruner, open_study, suggest, tune  # noqa: E402

# train_size 300 of the 900 non-validation images: a third of the compute, the same code paths.
FIXED = {"model": "tiny-net", "epochs": 2, "batch_size": 64, "val_size": 100, "train_size": 300, "precision": "fp32",
         "download": False, "check_size": False, "threads": 2}
PARAMS = {"lr": {"type": "float", "low": 0.01, "high": 0.5, "log": True},
          "label_smoothing": {"type": "float", "low": 0.0, "high": 0.2},
          "translate": {"type": "int", "low": 0, "high": 4},
          "schedule": {"type": "categorical", "choices": ["onecycle", "cosine"]}}


def write_space(tmp_path, name="space", **changes) -> str:
    space = {"base": "default", "fixed": dict(FIXED), "params": dict(PARAMS)}
    space.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return str(path)


def load(study_dir):
    return optuna.load_study(study_name="c100", storage=f"sqlite:///{study_dir / 'study.db'}")


def quiet(*_):
    pass


def test_default_space_is_valid():
    space = load_space("default")
    assert space.base == "default" and {"lr", "weight_decay", "batch_size", "schedule"} <= set(space.params)
    assert space.params["weight_decay"]["low"] == pytest.approx(1e-5)


@pytest.mark.parametrize("text, message", [
    ("params: {lr: {type: float, low: 0.1, high: 1}}\nparam: {}", "unknown top-level key 'param'"),
    ("params: {lrr: {type: float, low: 0.1, high: 1}}", "params.lrr: unknown config key 'lrr'"),
    ("fixed: {epoch: 3}\nparams: {lr: {type: float, low: 0.1, high: 1}}", "fixed: unknown config key 'epoch'"),
    ("params: {lr: {type: flaot, low: 0.1, high: 1}}", "type must be one of float, int, categorical"),
    ("params: {lr: {type: float, low: 1, high: 0.1}}", "low 1.0 is above high 0.1; swap them"),
    ("params: {lr: {type: float, low: 0, high: 1, log: true}}", "log: true needs low > 0"),
    ("params: {lr: {type: float, low: 0.1, hihg: 1}}", "unknown key 'hihg'"),
    ("params: {lr: {type: float, low: 0.1}}", "needs low and high"),
    ("params: {lr: {type: float, low: abc, high: 1}}", "low must be a number"),
    ("params: {lr: 0.1}", "params.lr must be a mapping"),
    ("params: {translate: {type: int, low: 0, high: 2.5}}", "type int needs whole numbers"),
    ("params: {batch_size: {type: float, low: 32, high: 256}}", "use type int or categorical"),
    ("params: {schedule: {type: int, low: 0, high: 2}}", "use type categorical"),
    ("params: {schedule: {type: categorical, choices: []}}", "non-empty list of choices"),
    ("params: {schedule: {type: categorical, choices: [cosine, linear]}}", "'linear' is not a valid value"),
    ("params: {translate: {type: int, low: 0, high: 20}}", "20 is not a valid value"),
    ("params: {seed: {type: int, low: 0, high: 9}}", "'seed' cannot be searched"),
    ("fixed: {lr: 0.1}\nparams: {lr: {type: float, low: 0.1, high: 1}}", "both fixed and searched"),
    ("fixed: {val_size: 0}\nparams: {lr: {type: float, low: 0.1, high: 1}}", "set val_size > 0"),
    ("base: nope\nparams: {lr: {type: float, low: 0.1, high: 1}}", "base 'nope' is not a preset"),
    ("fixed: {epochs: 2}", "params is empty"),
    ("[1, 2]", "must be a mapping"),
])
def test_bad_space_is_one_line_error(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        load_space(str(path))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_space_on_the_command_line(tmp_path, capsys):
    assert main(["tune", "--space", "nope"]) == 2
    assert "unknown search space 'nope'" in capsys.readouterr().err
    assert main(["tune", "--space", write_space(tmp_path), "--trials", "0", "--study-dir", str(tmp_path / "s")]) == 2
    assert "--trials must be at least 1" in capsys.readouterr().err


def test_pruner_names():
    assert isinstance(make_pruner("median"), optuna.pruners.MedianPruner)
    assert isinstance(make_pruner("halving"), optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(make_pruner("none"), optuna.pruners.NopPruner)
    with pytest.raises(UserError, match="unknown pruner"):
        make_pruner("hyperband")


def test_seeded_sampler_repeats(tmp_path):
    space = load_space(write_space(tmp_path))
    drawn = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        study = open_study(tmp_path / name, space, seed=3)
        study.optimize(lambda t: suggest(t, space.params)["lr"], n_trials=3)
        drawn.append([t.params for t in study.trials])
    assert drawn[0] == drawn[1] and len({p["lr"] for p in drawn[0]}) == 3


def test_search_writes_study_best_config_summary_and_plots(tmp_path, cifar_dir, capsys):
    study_dir = tmp_path / "study"
    argv = ["tune", "--space", write_space(tmp_path), "--trials", "3", "--study-dir", str(study_dir),
            "--data-dir", str(cifar_dir), "--pruner", "none", "--sampler-seed", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    study = load(study_dir)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert all((study_dir / f"trial-{n:04d}" / "last.pt").is_file() for n in range(3))
    best = study.best_trial
    assert resolve(None, str(study_dir / "best.yaml"), {}).to_dict() == best.user_attrs["config"]
    cfg = best.user_attrs["config"]
    assert cfg["lr"] == best.params["lr"] and cfg["model"] == "tiny-net" and cfg["data_dir"] == str(cifar_dir)
    assert best.value == max(t.value for t in study.trials)
    summary = (study_dir / "summary.md").read_text()
    assert summary in out and "3 completed, 0 pruned, 0 failed" in summary and f"Best: trial {best.number}" in summary
    assert "| trial | state | val acc | epochs | lr | label_smoothing | translate | schedule |" in summary
    assert summary.count("| COMPLETE |") == 3 and "| 2/2 |" in summary
    for name in ("history", "curves", "importance"):
        assert (study_dir / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pruner_stops_trials_early(tmp_path, cifar_dir):
    # A threshold no trial reaches prunes every trial at its first validated epoch: the wiring
    # (report -> should_prune -> TrialPruned -> PRUNED, training stopped) is what is tested here.
    study_dir = tmp_path / "study"
    space = write_space(tmp_path, fixed={**FIXED, "epochs": 3})
    pruner = optuna.pruners.ThresholdPruner(lower=0.99)
    out = tune(space, 2, study_dir, pruner=pruner, where={"data_dir": str(cifar_dir)}, log=quiet)
    study = load(study_dir)
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 2
    assert all(t.user_attrs["epochs_run"] == 1 and list(t.intermediate_values) == [1] for t in study.trials)
    assert (study_dir / "trial-0000" / "metrics.csv").read_text().count("\n") == 2  # header + 1 epoch
    assert "best" not in out and not (study_dir / "best.yaml").exists()
    summary = (study_dir / "summary.md").read_text()
    assert summary.count("| PRUNED |") == 2 and "| 1/3 |" in summary
    assert "no trial completed" in summary and "importance.png skipped" in summary


def test_resume_after_kill_counts_finished_trials_and_reruns_interrupted_ones(tmp_path, cifar_dir):
    study_dir = tmp_path / "study"
    space = write_space(tmp_path)
    where = {"data_dir": str(cifar_dir)}

    def ctrl_c_in_trial_1(line):  # Ctrl-C after trial 1 saved its first epoch
        if line.startswith("trial 1: epoch   1"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tune(space, 2, study_dir, pruner="none", where=where, log=ctrl_c_in_trial_1)
    # A kill -9 as trial 2 starts: the trial stays RUNNING in the database.
    study = load(study_dir)
    killed = study.ask()
    suggest(killed, load_space(space).params)
    assert [t.state for t in load(study_dir).trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING]
    first = (study_dir / "trial-0000" / "last.pt").stat().st_mtime_ns

    lines = []
    tune(space, 3, study_dir, pruner="none", where=where, log=lines.append)
    trials = load(study_dir).trials
    states = [t.state for t in trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states) == 3
    assert [t.user_attrs.get("retry_of") for t in trials[3:]] == [1, 2]
    assert trials[3].params == trials[1].params and trials[4].params == trials[2].params
    assert sum(" training tiny-net" in line for line in lines) == 2  # only the two re-queued trials trained
    assert (study_dir / "trial-0000" / "last.pt").stat().st_mtime_ns == first  # the finished trial was not re-run
    assert "re-queued interrupted trials [1, 2]" in lines[0]
    assert "FAIL (interrupted; rerun as 3)" in (study_dir / "summary.md").read_text()

    lines.clear()
    tune(space, 3, study_dir, pruner="none", where=where, log=lines.append)  # done: trains nothing
    assert len(load(study_dir).trials) == 5 and "nothing to run" in lines[0]
    with pytest.raises(UserError, match="started with another search space"):
        tune(write_space(tmp_path, "other", fixed={**FIXED, "epochs": 3}), 3, study_dir, where=where, log=quiet)


def test_ctrl_c_on_the_command_line(monkeypatch, capsys):
    import c100.tune

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(c100.tune, "tune", interrupted)
    assert main(["tune"]) == 130
    assert "run the same command again to continue the search" in capsys.readouterr().err


def test_a_diverging_trial_is_pruned_and_the_search_goes_on(tmp_path, cifar_dir):
    # lr 1e6 makes the loss NaN within the first steps: training stops with Diverged, which the search
    # records as a pruned trial (a region to avoid) and carries on.
    study_dir = tmp_path / "study"
    space = write_space(tmp_path, params={"lr": {"type": "categorical", "choices": [1e6]}})
    out = tune(space, 2, study_dir, pruner="none", where={"data_dir": str(cifar_dir)}, log=quiet)
    study = load(study_dir)
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 2
    assert all("training diverged" in t.user_attrs["diverged"] for t in study.trials)
    assert "best" not in out
