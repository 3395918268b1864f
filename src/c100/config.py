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
from c100.data import default_data_dir

CHOICES = {
    "optimizer": ("sgd", "adam", "adamw"),
    "schedule": ("onecycle", "cosine", "multistep", "inverse-time", "constant"),
    "pad_mode": ("reflect", "zero", "edge"),
    "precision": ("auto", "fp32", "bf16", "fp16"),
    "eval_precision": ("fp32", "auto", "bf16", "fp16"),
    "normalize": ("cifar100", "none"),
    "device": ("auto", "cpu", "cuda", "mps"),
    "compile_mode": ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
}


def _f(default, help: str, **kw):
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    # model and data
    model: str = _f("resnet18", "architecture from the registry (see `c100 models`)")
    data_dir: str = _f("./data", "folder holding cifar-100-python/ (env CIFAR100_DATA)")
    download: bool = _f(True, "download CIFAR-100 when it is not in --data-dir")
    check_size: bool = _f(True, "refuse a data set whose splits are not CIFAR-100's 50,000 / 10,000 images (a "
                                "wrong or partial file); --no-check-size admits smaller ones, e.g. synthetic "
                                "data for tests and dry runs")
    val_size: int = _f(5000, "stratified validation images held out of train (0 = train on all 50k)")
    train_size: int = _f(0, "use a stratified subset of this many training images (0 = all that are not "
                            "validation): short experiments on a CPU")
    seed: int = _f(0, "seeds the split, the initialisation and every batch")
    init_from: str = _f("", "start from a trained model's weights instead of a random initialisation (fine-"
                            "tuning, e.g. at another resolution): 'default', a run folder (its last.pt), or a .pt "
                            "or .safetensors file of --model's architecture; it must have trained on this run's "
                            "split (same --seed and --val-size)")
    # optimisation
    epochs: int = _f(30, "training epochs")
    batch_size: int = _f(128, "images per step: the global batch, split evenly over torchrun's processes")
    optimizer: str = _f("sgd", "sgd (Nesterov) | adam | adamw")
    lr: float = _f(0.1, "peak learning rate")
    lr_ref_batch: int = _f(0, "0 = --lr is used as given; else the peak lr is --lr * batch-size / lr-ref-batch "
                              "(linear scaling, Goyal et al. 2017)")
    momentum: float = _f(0.9, "SGD momentum / Adam beta1")
    nesterov: bool = _f(True, "Nesterov momentum for SGD")
    adam_eps: float = _f(1e-8, "Adam epsilon (Keras uses 1e-7)")
    weight_decay: float = _f(5e-4, "weight decay on conv/linear weights (decoupled for adamw)")
    l2: float = _f(0.0, "L2 penalty added to the loss: l2 * sum(w^2) / 2 over all trainable weights")
    schedule: str = _f("onecycle", "onecycle | cosine | multistep | inverse-time | constant")
    warmup_epochs: float = _f(1.0, "linear warm-up from 0 (onecycle, cosine); at most a quarter of training")
    milestones: list = _f([0.5, 0.75], "multistep: fractions of training where lr is multiplied by gamma")
    gamma: float = _f(0.1, "multistep factor")
    lr_decay: float = _f(0.0, "inverse-time decay per step: lr / (1 + lr_decay * step), as Keras' decay")
    label_smoothing: float = _f(0.0, "label smoothing of the cross-entropy")
    grad_clip: float = _f(0.0, "clip the gradient norm to this value (0 = off)")
    ema: float = _f(0.0, "decay of an exponential moving average of the weights (0 = off)")
    whiten_stem: bool = _f(False, "start the stem's filters as the whitening transform of 3x3 training patches "
                                  "(models/whiten.py; the architecture is unchanged)")
    freeze_stem: bool = _f(False, "keep the stem's filters at their initial values (with --whiten-stem, as "
                                  "airbench does: the whitening stays exact; its BatchNorm still trains)")
    freeze_early_at: float = _f(0.0, "from this fraction of training on, stop training the stem and the first "
                                     "stage (ResNet's layer1): their backward passes are skipped (0 = never)")
    # time-to-accuracy
    time_budget: float = _f(0.0, "seconds of training (0 = off): the lr and resolution schedules follow the "
                                 "clock instead of the step count, and training stops when it is spent; "
                                 "--epochs is then only a cap")
    target_acc: float = _f(0.0, "validation accuracy whose first reach is recorded (time, epoch; 0 = off)")
    eval_every: int = _f(1, "validate every N epochs (0 = only after the last one)")
    budget_includes_eval: bool = _f(False, "validation passes during training count against --time-budget: the "
                                           "run then ends on the budget (plus the final validation) whatever "
                                           "they cost on this machine")
    # augmentation
    translate: int = _f(4, "max random shift in pixels (crop with padding)")
    pad_mode: str = _f("reflect", "fill for the shift: reflect | zero | edge")
    flip: bool = _f(True, "random horizontal flips")
    alt_flip: bool = _f(False, "alternating flips: each image is mirrored on every other epoch, from a random "
                               "start (needs --flip)")
    cutout: int = _f(0, "side of a random square zeroed per image (0 = off)")
    mixup: float = _f(0.0, "MixUp: each batch blended with itself reversed, the share drawn from Beta(a, a) with "
                           "this a (0 = off; with --cutmix, each batch takes one of the two)")
    cutmix: float = _f(0.0, "CutMix: a box of the reversed batch pasted in, its area from Beta(a, a) with this a "
                            "(0 = off)")
    mix_from: float = _f(0.0, "fraction of training from which MixUp/CutMix start (the start trains on clean "
                              "images)")
    mix_until: float = _f(1.0, "fraction of training after which MixUp/CutMix stop (the end trains on clean "
                               "images)")
    normalize: str = _f("cifar100", "cifar100 (CIFAR-100 mean/std) | none (pixels / 255)")
    resolutions: list = _f([], "progressive resizing: training resolutions in order, e.g. 16 24 32 (empty = 32)")
    res_milestones: list = _f([], "fractions of training where the next resolution starts, e.g. 0.4 0.7")
    eval_resolution: int = _f(0, "pixel size the images are resized to (as in training) for validation, "
                                 "evaluation and prediction (0 = the last training resolution: 32 without "
                                 "--resolutions)")
    # speed
    precision: str = _f("auto", "auto (bf16 on GPUs and CPUs with native bf16, else fp32) | fp32 | bf16 "
                                "(autocast) | fp16 (GPU, with a grad scaler)")
    channels_last: bool = _f(True, "NHWC memory layout (faster convolutions)")
    compile: bool = _f(False, "torch.compile the model (one-time cost, measured and reported apart)")
    compile_mode: str = _f("default", "torch.compile mode: default | reduce-overhead (CUDA graphs) | max-autotune"
                                      " | max-autotune-no-cudagraphs")
    device: str = _f("auto", "auto | cpu | cuda | mps")
    threads: int = _f(0, "CPU threads for torch (0 = torch's default)")
    sync_bn: bool = _f(False, "under torchrun: BatchNorm statistics over the global batch, not each process's "
                              "slice (SyncBatchNorm)")
    deterministic: bool = _f(False, "torch.use_deterministic_algorithms (slower, bitwise repeatable)")
    tensorboard: bool = _f(False, "also write the per-epoch metrics to RUN/tensorboard for TensorBoard (pip "
                                  "install 'c100[tensorboard]')")
    eval_precision: str = _f("fp32", "precision of validation during training, and of the test pass "
                                     "benchmarks/record.py makes: fp32 (the reference, as `c100 evaluate`) | "
                                     "auto | bf16 | fp16 (autocast)")
    eval_batch_size: int = _f(100, "images per evaluation step (100 is fastest on a 2-core CPU; GPUs want ~1000)")
    tta: bool = _f(False, "flip test-time augmentation as part of the model: validation, test and predictions "
                          "average each image's and its mirror's probabilities (twice the evaluation time)")

    def validate(self) -> TrainConfig:
        from c100.models import list_models

        if self.model not in list_models():
            raise UserError(f"unknown model '{self.model}'; choose one of: {', '.join(list_models())}")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"--{_flag(name)} '{getattr(self, name)}' is not one of: {', '.join(allowed)}")
        positive = ["epochs", "batch_size", "eval_batch_size"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise UserError(f"--{_flag(name)} must be positive, got {getattr(self, name)}")
        nonneg = ["lr", "weight_decay", "l2", "warmup_epochs", "lr_decay", "grad_clip", "translate",
                  "cutout", "val_size", "threads", "time_budget", "eval_every", "train_size", "lr_ref_batch",
                  "mixup", "cutmix"]
        for name in nonneg:
            if getattr(self, name) < 0:
                raise UserError(f"--{_flag(name)} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.label_smoothing < 1:
            raise UserError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.ema < 1:
            raise UserError(f"--ema must be in [0, 1) (e.g. 0.999), got {self.ema}")
        if not 0 <= self.momentum < 1:
            raise UserError(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.translate > 16:
            raise UserError(f"--translate {self.translate} exceeds half the 32-px image; use 0..16")
        if any(not 0 < m < 1 for m in self.milestones):
            raise UserError(f"--milestones must be fractions of training in (0, 1), got {self.milestones}")
        if not 0 <= self.target_acc <= 1:
            raise UserError(f"--target-acc is a fraction in [0, 1] (e.g. 0.6221), got {self.target_acc}")
        if not 0 <= self.freeze_early_at < 1:
            raise UserError(f"--freeze-early-at is a fraction of training in [0, 1) (0 = off), got "
                            f"{self.freeze_early_at}")
        if not 0 <= self.mix_until <= 1:
            raise UserError(f"--mix-until is a fraction of training in [0, 1], got {self.mix_until}")
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


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
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
    from c100.checkpoint import atomic_write_text

    atomic_write_text(path, header + yaml.safe_dump(values, sort_keys=False))
