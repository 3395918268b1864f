"""One typed config per training run: dataclass defaults < preset YAML < --config FILE < flags.

Presets are data (YAML files in presets/), not code paths. The resolved config is written into every
run folder as config.yaml and stored in every checkpoint as a plain dict.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from c100 import UserError
from c100.atomic import atomic_write_text
from c100.data import default_data_dir

# Each field is in one group: the recipe (what to train), evaluation (how the model is judged and fed),
# run (where to run and what to log: these may differ between a run and its resume, or between the
# trials of a search, as they change nothing that is trained).
GROUPS = ("recipe", "evaluation", "run")


def _field(group: str, default, help: str, bounds: str = "", what: str = "", note: str = "",
           choices: tuple = ()):
    """A config field and its metadata: its group (GROUPS), its help text, the values it may take
    (`choices`) or, for a number, the interval it must lie in, as "[0, 1)" or "(0, inf)", with what it is
    ("a fraction of training") and a note for the error message. A list's bounds hold for each number."""
    meta = {"group": group, "help": help, "bounds": _interval(bounds) if bounds else None, "what": what,
            "note": note, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def _recipe(default, help: str, **check):
    """What to train: the model, the data split, optimisation, augmentation, precision; fixed for a run."""
    return _field("recipe", default, help, **check)


def _evaluation(default, help: str, **check):
    """How the model is judged during training and fed outside it (validation, evaluate, predict)."""
    return _field("evaluation", default, help, **check)


def _run(default, help: str, **check):
    """Where to run and what to log: not what is trained, so it may differ when a run is resumed or a
    search restarted (the data's place, the device, threads, TensorBoard)."""
    return _field("run", default, help, **check)


@dataclass(frozen=True)
class Interval:
    """The bounds of a number: [low, high], with either end open; "inf" as the high end admits any number."""

    low: float
    high: float
    low_open: bool
    high_open: bool

    def __contains__(self, x: float) -> bool:  # NaN is in none
        above = self.low < x if self.low_open else self.low <= x
        below = x <= self.high if self.high == float("inf") or not self.high_open else x < self.high
        return above and below

    def words(self, what: str = "") -> str:
        """As the errors say it: 'positive', '>= 0', 'in [0, 1)', 'a fraction of training in [0, 1)'."""
        if self.high == float("inf"):
            return "positive" if self.low == 0 and self.low_open else f">= {self.low:g}"
        text = f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        return f"{what} in {text}" if what else f"in {text}"


def _interval(text: str) -> Interval:
    low, high = (float(v) for v in text[1:-1].split(","))
    return Interval(low, high, text[0] == "(", text[-1] == ")")


@dataclass
class TrainConfig:
    # -- the recipe: what to train. Fixed for a run: a resume may change only --lr (ADJUSTABLE in train.py)
    # model and data split
    model: str = _recipe("resnet18", "architecture from the registry (see `c100 models`)")
    val_size: int = _recipe(5000, "stratified validation images held out of train (0 = train on all 50k)",
                            bounds="[0, inf)")
    train_size: int = _recipe(0, "use a stratified subset of this many training images (0 = all that are not "
                                 "validation): short experiments on a CPU", bounds="[0, inf)")
    seed: int = _recipe(0, "seeds the split, the initialisation and every batch")
    init_from: str = _recipe("", "start from a trained model's weights instead of a random initialisation (fine-"
                                 "tuning, e.g. at another resolution): 'default', a run folder (its last.pt), or a "
                                 ".pt or .safetensors file of --model's architecture; it must have trained on this "
                                 "run's split (same --seed and --val-size)")
    # optimisation
    epochs: int = _recipe(30, "training epochs", bounds="(0, inf)")
    batch_size: int = _recipe(128, "images per step: the global batch, split evenly over torchrun's processes",
                              bounds="(0, inf)")
    optimizer: str = _recipe("sgd", "sgd (Nesterov) | adam | adamw",
                             choices=("sgd", "adam", "adamw"))
    lr: float = _recipe(0.1, "peak learning rate", bounds="[0, inf)")
    lr_ref_batch: int = _recipe(0, "0 = --lr is used as given; else the peak lr is --lr * batch-size / "
                                   "lr-ref-batch (linear scaling, Goyal et al. 2017)", bounds="[0, inf)")
    momentum: float = _recipe(0.9, "SGD momentum / Adam beta1", bounds="[0, 1)")
    nesterov: bool = _recipe(True, "Nesterov momentum for SGD")
    adam_eps: float = _recipe(1e-8, "Adam epsilon (Keras uses 1e-7)")
    weight_decay: float = _recipe(5e-4, "weight decay on conv/linear weights (decoupled for adamw)",
                                  bounds="[0, inf)")
    l2: float = _recipe(0.0, "L2 penalty added to the loss: l2 * sum(w^2) / 2 over all trainable weights",
                        bounds="[0, inf)")
    schedule: str = _recipe("onecycle", "onecycle | cosine | multistep | inverse-time | constant",
                            choices=("onecycle", "cosine", "multistep", "inverse-time", "constant"))
    warmup_epochs: float = _recipe(1.0, "linear warm-up from 0 (onecycle, cosine); at most a quarter of training",
                                   bounds="[0, inf)")
    milestones: list = _recipe([0.5, 0.75], "multistep: fractions of training where lr is multiplied by gamma",
                               bounds="(0, 1)", what="fractions of training")
    gamma: float = _recipe(0.1, "multistep factor")
    lr_decay: float = _recipe(0.0, "inverse-time decay per step: lr / (1 + lr_decay * step), as Keras' decay",
                              bounds="[0, inf)")
    label_smoothing: float = _recipe(0.0, "label smoothing of the cross-entropy", bounds="[0, 1)")
    grad_clip: float = _recipe(0.0, "clip the gradient norm to this value (0 = off)", bounds="[0, inf)")
    ema: float = _recipe(0.0, "decay of an exponential moving average of the weights (0 = off)", bounds="[0, 1)",
                         note="e.g. 0.999")
    ema_from: float = _recipe(0.0, "the EMA averages only from this fraction of training on (an average over the "
                                   "tail, as SWA); before it, it follows the weights", bounds="[0, 1)",
                              what="a fraction of training", note="0 = from the start")
    lookahead_k: int = _recipe(0, "Lookahead (lookahead.py): every k optimizer steps a slow copy of the weights "
                                  "moves --lookahead-alpha of the way to them and they restart from it (0 = off)",
                               bounds="[0, inf)", note="e.g. 5")
    lookahead_alpha: float = _recipe(0.5, "how far the slow weights move towards the fast ones at each Lookahead "
                                          "synchronisation", bounds="(0, 1]", what="a fraction")
    whiten_stem: bool = _recipe(False, "start the stem's filters as the whitening transform of 3x3 training "
                                       "patches (models/whiten.py; the architecture is unchanged)")
    freeze_stem: bool = _recipe(False, "keep the stem's filters at their initial values (with --whiten-stem, as "
                                       "airbench does: the whitening stays exact; its BatchNorm still trains)")
    freeze_early_at: float = _recipe(0.0, "from this fraction of training on, stop training the stem and the first "
                                          "stage (ResNet's layer1): their backward passes are skipped (0 = never)",
                                     bounds="[0, 1)", what="a fraction of training", note="0 = off")
    keep_hardest: float = _recipe(1.0, "from the second epoch on, train each epoch on this fraction of the training "
                                       "images: those whose loss was highest when last seen (1 = all)",
                                  bounds="(0, 1]", what="a fraction of the training images", note="1 = all")
    # time-to-accuracy
    time_budget: float = _recipe(0.0, "seconds of training (0 = off): the lr and resolution schedules follow the "
                                      "clock instead of the step count, and training stops when it is spent; "
                                      "--epochs is then only a cap", bounds="[0, inf)")
    budget_includes_eval: bool = _recipe(False, "validation passes during training count against --time-budget: "
                                                "the run then ends on the budget (plus the final validation) "
                                                "whatever they cost on this machine")
    # augmentation
    translate: int = _recipe(4, "max random shift in pixels (crop with padding)", bounds="[0, 16]",
                             note="more exceeds half the 32-px image")
    pad_mode: str = _recipe("reflect", "fill for the shift: reflect | zero | edge",
                            choices=("reflect", "zero", "edge"))
    flip: bool = _recipe(True, "random horizontal flips")
    alt_flip: bool = _recipe(False, "alternating flips: each image is mirrored on every other epoch, from a "
                                    "random start (needs --flip)")
    cutout: int = _recipe(0, "side of a random square zeroed per image (0 = off)", bounds="[0, inf)")
    mixup: float = _recipe(0.0, "MixUp: each batch blended with itself reversed, the share drawn from Beta(a, a) "
                                "with this a (0 = off; with --cutmix, each batch takes one of the two)",
                           bounds="[0, inf)")
    cutmix: float = _recipe(0.0, "CutMix: a box of the reversed batch pasted in, its area from Beta(a, a) with "
                                 "this a (0 = off)", bounds="[0, inf)")
    mix_from: float = _recipe(0.0, "fraction of training from which MixUp/CutMix start (the start trains on clean "
                                   "images)")
    mix_until: float = _recipe(1.0, "fraction of training after which MixUp/CutMix stop (the end trains on clean "
                                    "images)", bounds="[0, 1]", what="a fraction of training")
    normalize: str = _recipe("cifar100", "cifar100 (CIFAR-100 mean/std) | none (pixels / 255)",
                             choices=("cifar100", "none"))
    resolutions: list = _recipe([], "progressive resizing: training resolutions in order, e.g. 16 24 32 (empty = "
                                    "32)")
    res_milestones: list = _recipe([], "fractions of training where the next resolution starts, e.g. 0.4 0.7")
    # precision and speed (each changes the numbers a run computes, so it is part of the recipe)
    precision: str = _recipe("auto", "auto (bf16 on GPUs and CPUs with native bf16, else fp32) | fp32 | bf16 "
                                     "(autocast) | fp16 (GPU, with a grad scaler)",
                             choices=("auto", "fp32", "bf16", "fp16"))
    channels_last: bool = _recipe(True, "NHWC memory layout (faster convolutions)")
    compile: bool = _recipe(False, "torch.compile the model (one-time cost, measured and reported apart)")
    compile_mode: str = _recipe("default", "torch.compile mode: default | reduce-overhead (CUDA graphs) | "
                                           "max-autotune | max-autotune-no-cudagraphs",
                                choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"))
    sync_bn: bool = _recipe(False, "under torchrun: BatchNorm statistics over the global batch, not each "
                                   "process's slice (SyncBatchNorm)")
    deterministic: bool = _recipe(False, "torch.use_deterministic_algorithms (slower, bitwise repeatable)")

    # -- evaluation: how the model is judged during training and fed outside it
    target_acc: float = _evaluation(0.0, "validation accuracy whose first reach is recorded (time, epoch; 0 = "
                                         "off)", bounds="[0, 1]", what="a fraction", note="e.g. 0.6221")
    eval_every: int = _evaluation(1, "validate every N epochs (0 = only after the last one)", bounds="[0, inf)")
    eval_resolution: int = _evaluation(0, "pixel size the images are resized to (as in training) for validation, "
                                          "evaluation and prediction (0 = the last training resolution: 32 "
                                          "without --resolutions)")
    eval_precision: str = _evaluation("fp32", "precision of validation during training, and of the test pass "
                                              "benchmarks/record.py makes: fp32 (the reference, as `c100 "
                                              "evaluate`) | auto | bf16 | fp16 (autocast)",
                                      choices=("fp32", "auto", "bf16", "fp16"))
    eval_batch_size: int = _evaluation(100, "images per evaluation step (100 is fastest on a 2-core CPU; GPUs "
                                            "want ~1000)", bounds="(0, inf)")
    tta: bool = _evaluation(False, "flip test-time augmentation as part of the model: validation, test and "
                                   "predictions average each image's and its mirror's probabilities (twice the "
                                   "evaluation time)")

    # -- where to run and what to log: may differ between a run and its resume (RESUMABLE in train.py)
    data_dir: str = _run("./data", "folder holding cifar-100-python/ (env CIFAR100_DATA)")
    download: bool = _run(True, "download CIFAR-100 when it is not in --data-dir")
    check_size: bool = _run(True, "refuse a data set whose splits are not CIFAR-100's 50,000 / 10,000 images (a "
                                  "wrong or partial file); --no-check-size admits smaller ones, e.g. synthetic "
                                  "data for tests and dry runs")
    device: str = _run("auto", "auto | cpu | cuda | mps",
                       choices=("auto", "cpu", "cuda", "mps"))
    threads: int = _run(0, "CPU threads for torch (0 = torch's default)", bounds="[0, inf)")
    tensorboard: bool = _run(False, "also write the per-epoch metrics to RUN/tensorboard for TensorBoard (pip "
                                    "install 'c100[tensorboard]')")

    def validate(self) -> TrainConfig:
        """Every value within its field's choices and bounds (one line naming the flag and the fix), then the
        rules that tie fields together."""
        from c100.models import list_models  # here, not at the top: the CLI's --help does not wait for torch

        if self.model not in list_models():
            raise UserError(f"unknown model '{self.model}'; choose one of: {', '.join(list_models())}")
        for name, f in FIELDS.items():
            allowed = f.metadata["choices"]
            if allowed and getattr(self, name) not in allowed:
                raise UserError(f"--{_flag(name)} '{getattr(self, name)}' is not one of: {', '.join(allowed)}")
            if f.metadata["bounds"] is not None:
                _check_bounds(name, getattr(self, name), f.metadata)
        if not 0 <= self.mix_from < 1 or 0 < self.mix_until <= self.mix_from:
            raise UserError(f"--mix-from must be a fraction of training in [0, --mix-until), got {self.mix_from} "
                            f"with --mix-until {self.mix_until}")
        if self.alt_flip and not self.flip:
            raise UserError("--alt-flip needs --flip (it decides which images are mirrored, not whether)")
        self._validate_resolutions()
        return self

    def _validate_resolutions(self) -> None:
        res, ms = self.resolutions, self.res_milestones
        if any(not float(r).is_integer() or not 8 <= r <= 32 for r in res):
            raise UserError(f"--resolutions must be whole pixel sizes in 8..32, got {res}")
        if res and len(ms) != len(res) - 1:
            raise UserError(f"--res-milestones needs one fraction fewer than --resolutions ({len(res) - 1}), "
                            f"got {len(ms)}")
        if not res and ms:
            raise UserError("--res-milestones given without --resolutions; give both or neither")
        if any(not 0 < m < 1 for m in ms) or list(ms) != sorted(ms):
            raise UserError(f"--res-milestones must be increasing fractions in (0, 1), got {ms}")
        if self.eval_resolution and not 8 <= self.eval_resolution <= 32:
            raise UserError(f"--eval-resolution must be a pixel size in 8..32 (or 0 for the last training "
                            f"resolution), got {self.eval_resolution}")

    def eval_size(self) -> int:
        """The pixel size the model sees outside training: a model whose training ended at 24 px scores
        far better on test images brought to 24 px than on the 32 px originals (eval-resolution-*)."""
        return int(self.eval_resolution or (self.resolutions[-1] if self.resolutions else 32))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _check_bounds(name: str, value, meta: dict) -> None:
    """A number (or each number of a list) within its field's bounds, or one line that says them."""
    bounds, note = meta["bounds"], meta["note"]
    if any(v not in bounds for v in (value if isinstance(value, list) else [value])):
        raise UserError(f"--{_flag(name)} must be {bounds.words(meta['what'])}{f' ({note})' if note else ''}, "
                        f"got {value}")


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def keys(group: str) -> tuple[str, ...]:
    """The config keys of one group (GROUPS), in their order: keys("run") are the where-to-run settings."""
    return tuple(name for name, f in FIELDS.items() if f.metadata["group"] == group)


_TYPES = typing.get_type_hints(TrainConfig)


def list_presets() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("c100.presets").iterdir() if p.name.endswith(".yaml"))


def read_yaml(path: Path | str, what: str) -> dict:
    try:
        text = (path if hasattr(path, "read_text") else Path(path)).read_text()
        values = yaml.safe_load(text) or {}
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise UserError(f"{what} {path} is not valid YAML ({str(e).splitlines()[0]}); fix the file") from None
    if not isinstance(values, dict):
        raise UserError(f"{what} {path} must be a mapping of config keys to values")
    return values


def load_preset(name: str) -> dict:
    if name not in list_presets():
        raise UserError(f"unknown preset '{name}'; choose one of: {', '.join(list_presets())}")
    return read_yaml(resources.files("c100.presets") / f"{name}.yaml", "preset")


def _coerce(name: str, value, source: str):
    want = _TYPES[name]
    if want is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise UserError(f"{source}: '{_flag(name)}' must be true or false, got {value!r}")
    if want is list:
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split()]
        if not isinstance(value, list):
            raise UserError(f"{source}: '{_flag(name)}' must be a list, got {value!r}")
        try:
            return [float(v) for v in value]
        except (TypeError, ValueError):
            raise UserError(f"{source}: '{_flag(name)}' must be a list of numbers, got {value!r}") from None
    try:
        if want is int:  # accept 5, "5", 5.0 and "5e3"; refuse 2.5
            number = float(value)
            if isinstance(value, bool) or not number.is_integer():
                raise ValueError
            return int(number)
        return want(value)
    except (TypeError, ValueError):
        raise UserError(f"{source}: '{_flag(name)}' must be {want.__name__}, got {value!r}") from None


def apply(base: dict, overrides: dict, source: str) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        name = key.replace("-", "_")
        if name not in FIELDS:
            raise UserError(f"{source}: unknown config key '{key}'; see `c100 train --help` for the keys")
        out[name] = _coerce(name, value, source)
    return out


def resolve(preset: str | None, config_file: str | None, flags: dict) -> TrainConfig:
    """Merge defaults, a preset, a YAML file and flags (later wins), then validate."""
    values = {k: f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
              for k, f in FIELDS.items()}
    values["data_dir"] = default_data_dir()
    if preset:
        values = apply(values, load_preset(preset), f"preset {preset}")
    if config_file:
        values = apply(values, read_yaml(config_file, "config file"), f"config {config_file}")
    values = apply(values, {k: v for k, v in flags.items() if v is not None}, "flag")
    return TrainConfig(**values).validate()


def from_dict(values: dict) -> TrainConfig:
    """Rebuild a config saved in a run (ignoring keys a newer/older version does not know)."""
    known = {k: v for k, v in values.items() if k in FIELDS}
    return TrainConfig(**known)


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One kebab-case flag per config field; unset flags stay None so presets are not overridden."""
    group = parser.add_argument_group("config (override the preset)")
    for name, f in FIELDS.items():
        want = _TYPES[name]
        kw: dict = {"default": None, "help": f.metadata["help"] + f" [default {f.default!r}]"
                    if f.default is not dataclasses.MISSING else f.metadata["help"]}
        if want is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif want is list:
            kw["nargs"] = "+"
            kw["type"] = str
        else:
            kw["type"] = str  # coerced (with a one-line error) by apply()
            kw["metavar"] = name.upper() if want is str else want.__name__.upper()
        group.add_argument(f"--{_flag(name)}", dest=name, **kw)


def save_yaml(values: dict, path: Path, header: str = "") -> None:
    """The config as YAML, written atomically; `header` (comment lines) goes above it."""
    atomic_write_text(path, header + yaml.safe_dump(values, sort_keys=False))
