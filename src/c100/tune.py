"""Hyper-parameter search with Optuna: a YAML search space, one training run per trial, scored on
the validation split (the test set is never read), pruned epoch by epoch, stored in SQLite.

A study folder holds study.db, one run folder per trial (trial-0007/), and the results: best.yaml
(a config for `c100 train --config`), summary.md and PNG plots. Running the same command again
resumes: finished trials count toward --trials, interrupted ones run again from scratch.
"""

from __future__ import annotations

import json
import typing
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from c100 import UserError, config, lock
from c100.checkpoint import atomic_write_text
from c100.train import Diverged, setup_process, train

STUDY_NAME = "c100"  # fixed, so that the same --study-dir always reopens the same study
PARAM_KEYS = {"float": {"low", "high", "log", "step"}, "int": {"low", "high", "log", "step"},
              "categorical": {"choices"}}
NOT_SEARCHABLE = {
    "seed": "it changes the validation split, so trials would be scored on different images",
    "val_size": "it changes the validation split, so trials would be scored on different images",
    **{key: "it says where to run, not how to train" for key in config.keys("run")},
}


@dataclass
class Space:
    name: str  # a packaged name or the file's stem; names the default study folder
    source: str  # "space FILE", the prefix of every error message
    base: str | None  # a training preset, or None for the dataclass defaults
    fixed: dict  # config keys set for every trial, over the preset
    params: dict  # config key -> {type, low, high, log, step} or {type: categorical, choices}

    def as_dict(self) -> dict:
        return {"base": self.base, "fixed": self.fixed, "params": self.params}


# -- the search space ---------------------------------------------------------------------------
def list_spaces() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("c100.spaces").iterdir() if p.name.endswith(".yaml"))


def load_space(name_or_path: str) -> Space:
    """A packaged space by name (`default`) or a YAML file, validated."""
    if name_or_path in list_spaces() and not Path(name_or_path).exists():
        path, name = resources.files("c100.spaces") / f"{name_or_path}.yaml", name_or_path
    elif Path(name_or_path).exists() or name_or_path.endswith((".yaml", ".yml")):
        path, name = Path(name_or_path), Path(name_or_path).stem
    else:
        raise UserError(f"unknown search space '{name_or_path}'; pass a YAML file or one of: "
                        f"{', '.join(list_spaces())}")
    return check_space(config.read_yaml(path, "search space"), name, f"space {name_or_path}")


def check_space(values: dict, name: str, src: str) -> Space:
    unknown = set(values) - {"base", "fixed", "params"}
    if unknown:
        raise UserError(f"{src}: unknown top-level key '{sorted(unknown)[0]}'; a space has base, fixed and params")
    base, fixed, params = values.get("base"), values.get("fixed") or {}, values.get("params") or {}
    if base is not None and base not in config.list_presets():
        raise UserError(f"{src}: base '{base}' is not a preset; use one of: {', '.join(config.list_presets())}")
    if not isinstance(fixed, dict) or not isinstance(params, dict):
        raise UserError(f"{src}: fixed and params must be mappings of config keys")
    if not params:
        raise UserError(f"{src}: params is empty; give at least one config key to search, e.g. "
                        "lr: {type: float, low: 0.01, high: 0.5, log: true}")
    fixed = config.apply({}, fixed, f"{src}: fixed")
    try:
        cfg = config.resolve(base, None, fixed)
    except UserError as e:
        raise UserError(f"{src}: base and fixed do not form a valid config: {e}") from None
    if not cfg.val_size:
        raise UserError(f"{src}: a search is scored on the validation split; set val_size > 0 in fixed "
                        "(the test set is never used for choices)")
    space = Space(name, src, base, fixed, {})
    for key, spec in params.items():
        space.params[key] = check_param(space, key, spec)
    return space


def check_param(space: Space, key: str, spec) -> dict:
    src = f"{space.source}: params.{key}"
    if key not in config.FIELDS:
        raise UserError(f"{src}: unknown config key '{key}'; see `c100 train --help` for the keys")
    if key in NOT_SEARCHABLE:
        raise UserError(f"{src}: '{key}' cannot be searched: {NOT_SEARCHABLE[key]}; set it in fixed instead")
    if key in space.fixed:
        raise UserError(f"{src}: '{key}' is both fixed and searched; remove it from one of them")
    if not isinstance(spec, dict):
        raise UserError(f"{src} must be a mapping such as {{type: float, low: 0.01, high: 0.5, log: true}}")
    kind = spec.get("type")
    if kind not in PARAM_KEYS:
        raise UserError(f"{src}: type must be one of {', '.join(PARAM_KEYS)}, got {kind!r}")
    extra = set(spec) - PARAM_KEYS[kind] - {"type"}
    if extra:
        raise UserError(f"{src}: unknown key '{sorted(extra)[0]}'; type {kind} takes "
                        f"{', '.join(sorted(PARAM_KEYS[kind]))}")
    spec = check_choices(src, spec) if kind == "categorical" else check_range(src, key, spec)
    for value in spec.get("choices", [spec.get("low"), spec.get("high")]):  # the ends of a range are valid
        try:
            config.resolve(space.base, None, {**space.fixed, key: value})
        except UserError as e:
            raise UserError(f"{src}: {value!r} is not a valid value ({e})") from None
    return spec


def check_choices(src: str, spec: dict) -> dict:
    choices = spec.get("choices")
    if not isinstance(choices, list) or not choices:
        raise UserError(f"{src}: categorical needs a non-empty list of choices, e.g. choices: [64, 128, 256]")
    if any(not isinstance(c, (str, int, float, bool)) for c in choices):  # what Optuna can store
        raise UserError(f"{src}: choices must be plain values (numbers, strings, true/false), got {choices}")
    return {"type": "categorical", "choices": choices}


def check_range(src: str, key: str, spec: dict) -> dict:
    kind, out, want = spec["type"], {"type": spec["type"]}, typing.get_type_hints(config.TrainConfig)[key]
    if kind == "float" and want is not float:
        better = "int or categorical" if want is int else "categorical"
        raise UserError(f"{src}: '{key}' is not a real number but {want.__name__}; use type {better}")
    if kind == "int" and want not in (int, float):
        raise UserError(f"{src}: '{key}' is not a number but {want.__name__}; use type categorical")
    for end in ("low", "high", "step"):
        if end not in spec:
            continue
        try:  # YAML reads 1e-5 (no dot) as a string; accept it as the number it means
            out[end] = float(spec[end])
        except (TypeError, ValueError):
            raise UserError(f"{src}: {end} must be a number, got {spec[end]!r}") from None
        if kind == "int":
            if not out[end].is_integer():
                raise UserError(f"{src}: type int needs whole numbers, got {end} {spec[end]!r}")
            out[end] = int(out[end])
    if "low" not in out or "high" not in out:
        raise UserError(f"{src}: type {kind} needs low and high, e.g. {{type: {kind}, low: 0, high: 4}}")
    if out["low"] > out["high"]:
        raise UserError(f"{src}: low {out['low']} is above high {out['high']}; swap them")
    out["log"] = bool(spec.get("log", False))
    if out["log"] and out["low"] <= 0:
        raise UserError(f"{src}: log: true needs low > 0, got {out['low']}")
    if out["log"] and "step" in out:
        raise UserError(f"{src}: step and log: true cannot be combined; drop one")
    if out.get("step", 1) <= 0:
        raise UserError(f"{src}: step must be positive, got {out['step']}")
    return out


def suggest(trial, params: dict) -> dict:
    """Draw one value per searched key; the trial records them under the config key's name."""
    out = {}
    for key, s in params.items():
        if s["type"] == "categorical":
            out[key] = trial.suggest_categorical(key, s["choices"])
        elif s["type"] == "int":
            out[key] = trial.suggest_int(key, s["low"], s["high"], step=s.get("step", 1), log=s["log"])
        else:
            out[key] = trial.suggest_float(key, s["low"], s["high"], step=s.get("step"), log=s["log"])
    return out


# -- the study ----------------------------------------------------------------------------------
def require_optuna():
    try:
        import optuna
    except ImportError:
        raise UserError("c100 tune needs Optuna; install it with: pip install 'c100[tune]'") from None
    return optuna


def make_pruner(name):
    """median (default): stop a trial whose accuracy at an epoch is below the median of the earlier
    trials at that epoch, once 5 trials finished and from epoch 3 on (the first epochs' ranking is
    mostly warm-up noise). halving: successive halving, Optuna's defaults. none: never stop early.
    An Optuna pruner object passes through (tests, library use)."""
    optuna = require_optuna()
    if isinstance(name, optuna.pruners.BasePruner):
        return name
    pruners = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2),
               "halving": optuna.pruners.SuccessiveHalvingPruner, "none": optuna.pruners.NopPruner}
    if name not in pruners:
        raise UserError(f"unknown pruner '{name}'; choose one of: {', '.join(pruners)}")
    return pruners[name]()


def lock_study(study_dir: Path):
    """One search per study folder at a time: that is what lets a restart treat every trial left
    RUNNING as killed. The OS drops the lock when the process dies, however it dies."""
    return lock.hold(study_dir / "study.lock", f"another c100 tune is running on {study_dir}; wait for it or "
                                               f"pass another --study-dir")


def open_study(study_dir: Path, space: Space, seed: int, pruner=None):
    """Create or reopen the study in study_dir/study.db; refuse to mix two search spaces in one study."""
    optuna = require_optuna()
    storage = f"sqlite:///{(study_dir / 'study.db').resolve()}"
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction="maximize", pruner=pruner,
                                load_if_exists=True)
    stored, current = study.user_attrs.get("space"), json.dumps(space.as_dict(), sort_keys=True)
    if stored is None:
        study.set_user_attr("space", current)
    elif stored != current:
        raise UserError(f"the study in {study_dir} was started with another search space; pass the same --space "
                        "to resume it, or another --study-dir for a new search")
    # Offset by the trials already drawn: a resumed search must not replay the first draws of the
    # seed (duplicates of finished trials); an uninterrupted search stays exactly repeatable.
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))
    return study


def requeue_interrupted(study) -> list[int]:
    """Trials a kill left RUNNING, or that Ctrl-C interrupted (marked FAIL), run again from scratch
    with the same values, each once. Their half-trained folders stay; the retry gets a new number.
    Enqueue before marking failed: a kill in between leaves nothing queued twice."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    queued = []
    for t in trials:
        interrupted = t.state == TrialState.RUNNING or (t.state == TrialState.FAIL and t.user_attrs.get("interrupted"))
        if interrupted and t.number not in retried:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            queued.append(t.number)
        if t.state == TrialState.RUNNING:
            study.tell(t.number, state=TrialState.FAIL)
    return queued


def count_finished(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def make_objective(space: Space, study_dir: Path, where: dict, log):
    """A trial = one `c100 train` run in study_dir/trial-NNNN. Its value is the validation accuracy
    after the last epoch, not the best epoch: the max over epochs is an optimistic pick on noisy
    numbers, and the last epoch is what `c100 train --config best.yaml` delivers."""
    import optuna

    def objective(trial) -> float:
        values = suggest(trial, space.params)
        try:
            cfg = config.resolve(space.base, None, {**space.fixed, **values, **where})
        except UserError as e:
            raise UserError(f"trial {trial.number}: the values {values} do not form a valid config ({e}); "
                            "narrow the space") from None
        trial.set_user_attr("config", cfg.to_dict())

        def on_epoch(trainer, row: dict) -> None:
            trial.set_user_attr("epochs_run", row["epoch"])
            if row["val_acc"] is None:  # an epoch that was not validated (eval_every > 1)
                return
            trial.report(row["val_acc"], row["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"val acc {row['val_acc']:.2%} at epoch {row['epoch']}")

        run_dir = study_dir / f"trial-{trial.number:04d}"
        setup_process(cfg)  # tune is the entry point: each trial's threads and seed
        try:
            trainer = train(cfg, run_dir, log=lambda m: log(f"trial {trial.number}: {m}"), on_epoch=on_epoch)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)  # Optuna marks it FAIL; the next start re-queues it
            raise
        except Diverged as e:  # a value the search should learn to avoid, not the end of the search
            trial.set_user_attr("diverged", str(e))
            raise optuna.TrialPruned(f"diverged: {str(e)[:120]}") from None
        return trainer.history[-1]["val_acc"]

    return objective


def tune(space_name: str, trials: int, study_dir: Path | str | None = None, pruner="median", sampler_seed: int = 0,
         where: dict | None = None, log=print) -> dict:
    """Run (or resume) a search until `trials` trials finished (completed or pruned); write the results.
    `where` holds the run-location keys (data_dir, device, threads), which may differ between restarts."""
    space = load_space(space_name)
    if trials < 1:
        raise UserError(f"--trials must be at least 1, got {trials}")
    where = config.apply({}, {k: v for k, v in (where or {}).items() if v is not None}, "flag")
    optuna = require_optuna()
    study_dir = Path(study_dir or Path("runs") / f"tune-{space.name}")
    study_dir.mkdir(parents=True, exist_ok=True)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own one line per trial; errors stay one line
    try:
        with lock_study(study_dir):
            study = open_study(study_dir, space, sampler_seed, make_pruner(pruner))
            requeued = requeue_interrupted(study)
            if requeued:
                log(f"re-queued interrupted trials {requeued}: they run again from the start")
            done = count_finished(study)
            if done < trials:
                log(f"search '{space.name}': {trials - done} trials to run ({done} finished before) -> {study_dir}")
                study.optimize(make_objective(space, study_dir, where, log), n_trials=trials - done,
                               callbacks=[lambda s, t: log(trial_line(t))])
            else:
                log(f"search '{space.name}': {done} trials finished already (--trials {trials}); nothing to run")
            return write_outputs(study, space, study_dir, log)
    finally:
        optuna.logging.set_verbosity(verbosity)


# -- results ------------------------------------------------------------------------------------
def trial_line(t) -> str:
    val = f"val acc {t.value:.2%}" if t.value is not None else "no value"
    return f"trial {t.number} {t.state.name.lower()}: {val} after {t.user_attrs.get('epochs_run', 0)} epochs"


def write_outputs(study, space: Space, study_dir: Path, log) -> dict:
    out = {"study": study_dir / "study.db", "summary": study_dir / "summary.md"}
    best = write_best(study, space, study_dir / "best.yaml")
    notes = [] if best else ["no trial completed yet (pruned ones do not count): no best.yaml"]
    if best:
        out["best"] = best
    pictures, skipped = plot_study(study, study_dir)
    out.update(pictures)
    text = summary_markdown(study, space, notes + skipped)
    atomic_write_text(out["summary"], text)
    log(text)
    log("written: " + ", ".join(str(p) for p in out.values()))
    return out


def write_best(study, space: Space, path: Path) -> Path | None:
    try:
        best = study.best_trial  # COMPLETE trials only: a pruned trial's value is a partial one
    except ValueError:
        return None
    header = (f"# Best trial of the search '{space.name}' ({path.parent}): trial {best.number}, final validation "
              f"accuracy {best.value:.2%} after {best.user_attrs['config']['epochs']} epochs.\n"
              f"# Train it: c100 train --config {path} --out runs/NAME  (flags still override, e.g. --epochs)\n")
    atomic_write_text(path, header + yaml.safe_dump(best.user_attrs["config"], sort_keys=False))
    return path


def summary_markdown(study, space: Space, notes: list[str]) -> str:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = {word: sum(t.state == s for t in trials) for word, s in
              (("completed", TrialState.COMPLETE), ("pruned", TrialState.PRUNED), ("failed", TrialState.FAIL))}
    lines = [f"# Search '{space.name}'", "",
             ", ".join(f"{n} {word}" for word, n in counts.items()) + " trials. Val acc: validation "
             "accuracy after the last epoch run (for a pruned trial, where it stopped); the test set is not read.", ""]
    if counts["completed"]:
        best = study.best_trial
        lines += [f"Best: trial {best.number}, {best.value:.2%} -> best.yaml", ""]
    keys = list(space.params)
    rerun_as = {t.user_attrs["retry_of"]: t.number for t in trials if "retry_of" in t.user_attrs}
    lines += ["| trial | state | val acc | epochs | " + " | ".join(keys) + " |", "|---" * (4 + len(keys)) + "|"]
    for t in trials:
        state = t.state.name
        if t.number in rerun_as:
            state += f" (interrupted; rerun as {rerun_as[t.number]})"
        if "retry_of" in t.user_attrs:
            state += f" (rerun of {t.user_attrs['retry_of']})"
        val = f"{t.value:.2%}" if t.value is not None else "-"
        epochs = f"{t.user_attrs.get('epochs_run', 0)}/{t.user_attrs.get('config', {}).get('epochs', '?')}"
        cells = [_fmt(t.params[k]) if k in t.params else "-" for k in keys]
        lines.append(f"| {t.number} | {state} | {val} | {epochs} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + [f"Note: {n}" for n in notes]).rstrip() + "\n"


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def plot_study(study, study_dir: Path) -> tuple[dict, list[str]]:
    """history.png (value per trial, best so far), curves.png (validation accuracy per epoch, where
    pruned trials stop) and importance.png; returns the files and the notes on what was skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    draw = {"history": lambda: ovm.plot_optimization_history(study, target_name="final val acc"),
            "curves": lambda: ovm.plot_intermediate_values(study)}
    notes = []
    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) >= 2:
        # PED-ANOVA: numpy only (Optuna's default, fANOVA, needs scikit-learn before Optuna 5).
        draw["importance"] = lambda: ovm.plot_param_importances(study, evaluator=PedAnovaImportanceEvaluator(),
                                                                target_name="final val acc")
    else:
        notes.append("importance.png skipped: parameter importance needs at least 2 completed trials")
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-API and small-study warnings; the summary says what matters
        for name, fn in draw.items():
            fig = fn().figure
            fig.savefig(study_dir / f"{name}.png", dpi=120, bbox_inches="tight")
            plt.close(fig)
            out[name] = study_dir / f"{name}.png"
    return out, notes
