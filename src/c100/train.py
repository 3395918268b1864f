"""The training loop: optimizer, schedule, precision, compile, EMA, checkpoints, per-epoch metrics.

`train(cfg, run_dir)` runs a new training; `resume(run_dir)` continues a killed one from its last
checkpoint and ends with the same weights an uninterrupted run would have (same seed, CPU,
deterministic): batches depend only on (seed, epoch), and the checkpoint holds every other state.
Under torchrun the same code runs as N processes that train like one (docs/distributed.md): each takes
its slice of every global batch, DDP averages the gradients, and only rank 0 logs and writes.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import itertools
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from c100 import UserError, augment, checkpoint, data, distributed, lock
from c100.augment import AugmentSpec, Normalize, epoch_generator, resize, steps_per_epoch
from c100.card import model_card
from c100.config import TrainConfig, apply, from_dict, read_yaml, save_yaml
from c100.device import autocast, resolve_precision, select_device
from c100.inference import Model, load
from c100.models import create_model
from c100.models.cpu_conv import small_map_gemm
from c100.models.resnet import early_parameters
from c100.models.whiten import stem_conv, whiten_stem
from c100.progress import TensorBoard, TimeEstimate
from c100.schedule import lr_factor, mixing_at, peak_lr, resolution_at

WHITEN_IMAGES = 5000  # enough for a stable 27 x 27 patch covariance (5000 x 900 patches)
CSV_FIELDS = ["epoch", "lr", "res", "train_loss", "train_acc", "val_loss", "val_acc", "epoch_s", "images_per_s",
              "clock_s", "eval_s"]
# Steps between checks that the loss is finite where the device runs ahead of Python (GPUs): each check
# waits for the device. On the CPU every step is checked, at no cost.
FINITE_CHECK_EVERY = 50


class Diverged(UserError):
    """The loss or the weights became NaN or infinite: training stopped before saving anything after it."""


class OutOfMemory(UserError):
    """The device ran out of memory: training stopped; the last checkpoint is whole."""


_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)  # torch.OutOfMemoryError since 2.5


def is_out_of_memory(e: BaseException) -> bool:
    """A GPU's out-of-memory error, or the CPU allocator's."""
    return isinstance(e, _OOM) or (isinstance(e, RuntimeError) and "can't allocate memory" in str(e))


@dataclass
class Tensors:
    """The data on the training device, ready for batching."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor | None
    val_y: torch.Tensor | None
    meta: data.Meta


def setup_process(cfg: TrainConfig) -> None:
    """Process-wide settings, applied once by the entry point (`c100 train`, `c100 tune`): the thread
    count, deterministic algorithms and the global generator's seed (which nothing in our models
    draws from after the initialisation, but a user's model with dropout would). Library callers of
    `train()` decide on these themselves; `train()` never changes them."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(cfg.seed)


def prepare(cfg: TrainConfig) -> tuple[TrainConfig, torch.device]:
    """This process's device (cuda:LOCAL_RANK under torchrun, after joining the process group) and the
    config with precision "auto" resolved: the run records the precision it really used."""
    distributed.local_batch(cfg.batch_size)  # the global batch splits evenly: checked before any process waits
    device = distributed.setup(select_device(cfg.device))
    if cfg.precision == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16 needs a CUDA GPU; on CPU use bf16 or fp32")
    return dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, device)), device


def load_data(cfg: TrainConfig, device: torch.device) -> Tensors:
    splits, meta = data.load(cfg.data_dir, cfg.download, ("train",), cfg.check_size)
    full = splits["train"]
    if cfg.val_size:
        tr, va = data.stratified_split(full.fine, cfg.val_size, cfg.seed)
        train, val = full.subset(tr), full.subset(va)
    else:
        train, val = full, None
    if cfg.train_size and cfg.train_size < len(train.fine):  # the same stratified rule as the validation split
        _, keep = data.stratified_split(train.fine, cfg.train_size, cfg.seed + 1)
        train = train.subset(keep)
    if val:  # each process validates its own contiguous share; the sums are all-reduced
        val = val.subset(distributed.shard(len(val)))

    def put(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    return Tensors(put(train.images), put(train.fine), put(val.images) if val else None,
                   put(val.fine) if val else None, meta)


def build_model(cfg: TrainConfig, device: torch.device, train_x: torch.Tensor, init: bool = True) -> nn.Module:
    """The network to train, on `device`: initialised from the seed alone (the global generator is left
    as it was), its stem whitened and frozen as the config says, in its memory layout. Without `init`
    (a resume: its checkpoint holds the weights) `--init-from` is not read, so a run outlives its source."""
    with torch.random.fork_rng(devices=[]):  # create_model initialises on the CPU
        torch.manual_seed(cfg.seed)
        model = create_model(cfg.model).to(device)
    if cfg.init_from:  # the source's stem replaces any whitening (it was whitened, or trained, already)
        if init:
            init_weights(model, cfg)
    elif cfg.whiten_stem:  # from training images only; the same on every process, so DDP needs no broadcast
        whiten_stem(model, Normalize(cfg.normalize, device)(train_x[:WHITEN_IMAGES]))
    if cfg.freeze_stem:  # no gradient, so neither SGD nor weight decay moves it
        stem_conv(model, "--freeze-stem").weight.requires_grad_(False)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.sync_bn:
        model = distributed.sync_batchnorm(model, device)
    return model


def init_weights(model: nn.Module, cfg: TrainConfig) -> None:
    """Copy the weights of the trained model `cfg.init_from` into `model` (on any device, in place), once
    it is checked to be of the same architecture and to have held out the same validation images: a
    source that trained on this run's validation images would make its validation accuracy a lie."""
    try:
        source = load(cfg.init_from, device="cpu", backend="torch")
    except UserError as e:
        raise UserError(f"--init-from: {e}") from None
    if source.arch != cfg.model:
        raise UserError(f"--init-from {cfg.init_from} is a {source.arch}, not a {cfg.model}; pass --model "
                        f"{source.arch} or another source")
    trained = source.card.get("trained", {}).get("config") or {}
    split = (trained.get("seed"), trained.get("val_size"))
    if cfg.val_size and trained and split != (cfg.seed, cfg.val_size):
        fix = ("--val-size 0" if not split[1] else f"--seed {split[0]} --val-size {split[1]}")
        raise UserError(f"--init-from {cfg.init_from} trained on other images than this run's training split, "
                        f"so this run's validation images may be ones it learned; pass {fix}")
    model.load_state_dict(source.module.state_dict())


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    # Weight decay on conv/linear weights only: decaying BN scales and biases only hurts.
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    lr = peak_lr(cfg)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=lr, betas=(cfg.momentum, 0.999), eps=cfg.adam_eps)


def l2_penalty(params: list[torch.Tensor]) -> torch.Tensor:
    """sum(w^2) / 2 over all trainable weights, as tf.nn.l2_loss computes it."""
    return torch.stack([p.float().pow(2).sum() for p in params]).sum() / 2


class EMA:
    """Exponential moving average of the weights; BN statistics are copied, not averaged."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_p = [p for p in self.model.parameters()]
        cur_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, cur_p, 1.0 - self.decay)
        for eb, mb in zip(self.model.buffers(), model.buffers(), strict=True):
            eb.copy_(mb)


@torch.no_grad()
def evaluate_loss_acc(model: Model, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Loss and accuracy over (x, y), or over every process's (x, y) together: the sums and counts are
    all-reduced, so each image counts once. The logits come from the one evaluation loop (Model.logits)."""
    logits = model.logits(x)
    loss_sum = F.cross_entropy(logits, y, reduction="sum")
    correct = (logits.argmax(1) == y).sum()
    sums = torch.stack([loss_sum.double(), correct.double(), torch.tensor(len(y), device=y.device).double()])
    loss_sum, correct, n = distributed.all_reduce_sum(sums).tolist()
    return loss_sum / n, correct / n


def write_metrics_csv(history: list[dict], path: Path) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for row in history:
        w.writerow({k: ("" if row.get(k) is None else row[k]) for k in CSV_FIELDS})
    checkpoint.atomic_write_text(path, buf.getvalue())


class Trainer:
    """The loop of one run, handed its parts: `fit()` trains from its epoch to cfg.epochs (or to the end
    of the time budget), validating, saving checkpoints and metrics as it goes. `build_trainer` makes
    the parts from a config."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                 data: Tensors, device: torch.device, log=print, on_epoch=None):
        # on_epoch(trainer, row) runs after each epoch is saved (e.g. Optuna's pruning); may raise
        self.cfg, self.run_dir, self.on_epoch = cfg, Path(run_dir), on_epoch
        self.model, self.optimizer, self.data, self.device = model, optimizer, data, device
        self.log = log if distributed.is_main() else _quiet  # rank-0 discipline: one voice, one set of files
        self.world, self.rank = distributed.world_size(), distributed.rank()
        self.norm = Normalize(cfg.normalize, device)
        meta = data.meta
        self.card = model_card(cfg, meta.fine_names, meta.coarse_names, meta.fine_to_coarse)
        # Frozen from cfg.freeze_early_at on (FreezeOut, Brock et al. 2017): with nothing before them to
        # train, autograd then skips the backward of the stem and layer1, the largest maps.
        self.early = early_parameters(model) if cfg.freeze_early_at else []
        if self.early and self.world > 1:
            raise UserError("--freeze-early-at does not run under torchrun (DDP expects every gradient); drop it")
        # oneDNN is slow on tiny maps: as GEMMs, their convolutions run the cpu-fast step 1.4x faster at
        # 16 and 24 px in bf16 on an AMX Xeon (models/cpu_conv.py); compiled, they stay oneDNN's
        self.gemm_convs = device.type == "cpu" and not cfg.compile
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        self.ema = EMA(model, cfg.ema) if cfg.ema else None
        self.spec = AugmentSpec(cfg.translate, cfg.pad_mode, cfg.flip, cfg.cutout)
        self.per_epoch = steps_per_epoch(len(data.train_y), cfg.batch_size)
        self.total_steps = self.per_epoch * cfg.epochs
        self.step, self.epoch, self.history = 0, 0, []
        self.best_acc, self.best_state = -1.0, None
        # seconds spent training (checkpoints and compilation not included; validation passes only with
        # budget_includes_eval): what --time-budget spends and the schedules follow
        self.clock = 0.0
        self.compile_s = 0.0  # one-time cost of compilation and warm-up, measured apart
        self.target: dict | None = None  # when val accuracy first reached cfg.target_acc
        self.resumes: list[dict] = []  # each resume: at which epoch and step, and what it changed
        self.check_every = 1 if device.type == "cpu" else FINITE_CHECK_EVERY
        self.l2_params = [p for p in model.parameters() if p.requires_grad] if cfg.l2 else []
        mode = None if cfg.compile_mode == "default" else cfg.compile_mode
        # DDP (under torchrun) averages the gradients in backward; compiling the DDP module lets dynamo
        # split the graph at the gradient buckets so communication overlaps the backward pass.
        self.ddp = distributed.wrap(model, device)
        # dynamic=False: one static graph per training resolution (progressive resizing) rather than a
        # slower shape-generic graph after the second shape.
        self.forward = torch.compile(self.ddp, mode=mode, dynamic=False) if cfg.compile else self.ddp
        self.estimate = TimeEstimate(self.total_steps, cfg.time_budget, device.type == "cpu", cfg.resolutions, self.log,
                                     passes_on_clock=cfg.budget_includes_eval)
        self.tensorboard = TensorBoard(self.run_dir) if cfg.tensorboard and distributed.is_main() else None
        self.flip_start = None
        if cfg.alt_flip:  # which images start mirrored: fixed by the seed, so resumed runs agree
            g = epoch_generator(cfg.seed, -1, device)
            self.flip_start = torch.rand(len(data.train_y), device=device, generator=g) < 0.5

    # -- state ----------------------------------------------------------------------------------
    def progress_state(self) -> dict:
        return {"step": self.step, "total_steps": self.total_steps, "epoch": self.epoch, "history": self.history,
                "best_val_acc": self.best_acc if self.best_acc >= 0 else None, "clock_s": self.clock,
                "compile_s": self.compile_s, "target": self.target, "resumes": self.resumes}

    def state(self, finished: bool) -> dict:
        return checkpoint.training_state(self.cfg.to_dict(), self.model, self.ema.model if self.ema else None,
                                         self.optimizer, self.scaler, self.data.meta, self.progress_state(),
                                         finished)

    def restore(self, state: dict) -> None:
        """Every state of the loop from a checkpoint (the global generator is the caller's: resume())."""
        p = checkpoint.restore_training(state, self.model, self.ema.model if self.ema else None, self.optimizer,
                                        self.scaler, str(self.run_dir / "last.pt"))
        self.step, self.epoch, self.history = p["step"], p["epoch"], p["history"]
        self.best_acc = p["best_val_acc"] if p["best_val_acc"] is not None else -1.0
        self.clock, self.target = p["clock_s"], p["target"]
        self.compile_s += p["compile_s"]
        self.resumes = p["resumes"]

    def save(self, finished: bool) -> None:
        if not distributed.is_main():
            return
        state = self.state(finished)
        try:
            # best before last: a kill in between leaves last.pt one epoch behind, and replaying that
            # epoch deterministically rewrites the same best.pt.
            if self.best_state is not None:
                best = dict(state, model=self.best_state["model"], ema=self.best_state["ema"],
                            epoch=self.best_state["epoch"], optimizer=None, scaler=None)
                checkpoint.save(best, self.run_dir / "best.pt")
                self.best_state = None  # written; keep no second copy in memory
            checkpoint.save(state, self.run_dir / "last.pt")
            write_metrics_csv(self.history, self.run_dir / "metrics.csv")
        except UserError as e:  # a full disk: every file is whole, the old one or the new one
            raise UserError(f"{e}; training stopped after epoch {self.epoch}: make room, then continue with "
                            f"`c100 train --resume {self.run_dir}`") from None

    # -- loop -----------------------------------------------------------------------------------
    def progress(self) -> float:
        """Fraction of training done: of the time budget when there is one, else of the steps."""
        if self.cfg.time_budget:
            return min(1.0, self.clock / self.cfg.time_budget)
        return self.step / self.total_steps

    def agree(self, clock: float) -> float:
        """With a time budget, every process takes the slowest one's clock: all then stop at the same step
        and follow the same schedules (a process that stopped alone would hang the others)."""
        return distributed.agree_max(clock) if self.cfg.time_budget else clock

    def budget_spent(self) -> bool:
        return bool(self.cfg.time_budget) and self.clock >= self.cfg.time_budget

    def set_lr(self) -> float:
        progress = self.progress() if self.cfg.time_budget else None
        lr = peak_lr(self.cfg) * lr_factor(self.cfg, self.step, self.total_steps, self.per_epoch, progress)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return lr

    def freeze_early(self) -> None:
        """Stop training the early parameters once progress reaches cfg.freeze_early_at; it follows the
        progress, so a resumed run freezes them at the same step as a straight one."""
        if self.early and self.early[-1].requires_grad and self.progress() >= self.cfg.freeze_early_at:
            for p in self.early:
                p.requires_grad_(False)

    def check_finite(self, loss_sum: torch.Tensor, lr: float) -> None:
        """Stop at once when the loss went NaN or infinite (on every process alike), before a bad step is
        saved: the last checkpoint stays the last good one."""
        bad = (~torch.isfinite(loss_sum)).double().reshape(1)
        if distributed.all_reduce_sum(bad).item():
            self.diverged("the loss became NaN or infinite", lr)

    def check_weights(self, lr: float) -> None:
        """The weights and BatchNorm statistics (and their average) are finite: checked before every save."""
        nets = [self.model] + ([self.ema.model] if self.ema else [])
        tensors = [t for net in nets for t in net.state_dict().values() if t.is_floating_point()]
        bad = torch.stack([~torch.isfinite(t).all() for t in tensors]).double().sum().reshape(1)
        if distributed.all_reduce_sum(bad).item():
            self.diverged("the weights became NaN or infinite", lr)

    def diverged(self, what: str, lr: float) -> None:
        cfg, epoch = self.cfg, self.epoch + 1
        when = f"step {self.step}" if self.check_every == 1 else f"step {self.step} (checked every {self.check_every})"
        cause = ("the learning rate is too high, or fp16 overflowed (try --precision bf16)"
                 if cfg.precision == "fp16" else "the learning rate is likely too high")
        kept = (f"last.pt still holds epoch {self.epoch}" if self.epoch else "no checkpoint was written")
        raise Diverged(f"training diverged: {what} in epoch {epoch} at {when}, lr {lr:.4g}: {cause}; {kept}: "
                       f"continue with a lower peak lr, e.g. `c100 train --resume {self.run_dir} --lr "
                       f"{cfg.lr / 10:g}`")

    def train_step(self, x: torch.Tensor, y: torch.Tensor, lam: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step at the current lr; returns the logits and the (unpenalised) loss. lam < 1:
        x is a MixUp/CutMix batch, lam of each image from y, the rest from y reversed."""
        cfg = self.cfg
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with small_map_gemm(self.gemm_convs):
            with autocast(cfg.precision, self.device):
                logits = self.forward(x)
                loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                if lam < 1:
                    other = F.cross_entropy(logits, y.flip(0), label_smoothing=cfg.label_smoothing)
                    loss = lam * loss + (1 - lam) * other
            total = loss + cfg.l2 * l2_penalty(self.l2_params) if cfg.l2 else loss
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
        if cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return logits.detach(), loss.detach()

    def batches(self, epoch: int):
        cfg = self.cfg
        gen = epoch_generator(cfg.seed, epoch, self.device)
        mask = augment.alternating_flips(self.flip_start, epoch) if self.flip_start is not None else None
        return augment.train_batches(self.data.train_x, self.data.train_y, cfg.batch_size, self.spec, self.norm, gen,
                                     flip_mask=mask, rank=self.rank, world=self.world)

    def warm_up_batches(self):
        """Batches from epochs no training run uses (-2, -3, ...), as many as asked for: a small
        training set may have fewer batches per epoch than the warm-up takes."""
        for epoch in itertools.count(2):
            yield from self.batches(-epoch)

    def warm_up(self) -> float:
        """Compile (and record CUDA graphs) before the clock starts: three steps at every training
        resolution with lr 0, then every state is put back. A compilation that fails falls back to eager
        mode with a warning (the run trains the same, slower). Returns the seconds it took."""
        t0 = time.perf_counter()
        saved_model = copy.deepcopy(self.model.state_dict())
        saved_opt = copy.deepcopy(self.optimizer.state_dict())
        for g in self.optimizer.param_groups:
            g["lr"] = 0.0
        batches = self.warm_up_batches()
        try:
            for res in sorted({int(r) for r in self.cfg.resolutions} or {32}):
                for _ in range(3):
                    x, y = next(batches)
                    self.train_step(resize(x, res), y)
        except Exception as e:  # noqa: BLE001 - whatever the compiler raised; eager mode shows a real bug anew
            if is_out_of_memory(e) or self.forward is self.ddp:
                raise
            self.run_eager(e)
        finally:
            self.model.load_state_dict(saved_model)
            self.optimizer.load_state_dict(saved_opt)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        self.compile_s += seconds
        return seconds

    def run_eager(self, error: Exception) -> None:
        """Train without torch.compile from here on (a compiler missing or failing on this machine)."""
        self.forward, self.gemm_convs = self.ddp, self.device.type == "cpu"
        if distributed.is_main():
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
            print(f"c100: warning: torch.compile failed ({type(error).__name__}: {reason}); training in eager "
                  f"mode (the same run, slower); --no-compile skips the attempt", file=sys.stderr, flush=True)

    def out_of_memory(self) -> OutOfMemory:
        """The one line for a device that ran out of memory: where, at which batch size, and what to try."""
        cfg, kept = self.cfg, (f"last.pt holds epoch {self.epoch}" if self.epoch else "no checkpoint was written")
        per = f" ({cfg.batch_size // self.world} per process)" if self.world > 1 else ""
        return OutOfMemory(f"out of memory on {checkpoint.device_name(self.device)} at batch size {cfg.batch_size}"
                           f"{per}, in epoch {self.epoch + 1} at step {self.step}; {kept}: start again with a smaller "
                           f"--batch-size (e.g. {max(1, cfg.batch_size // 2)}), or free the device's memory (other "
                           f"processes on it) or spread the batch over more processes (torchrun --nproc-per-node N) "
                           f"and continue with `c100 train --resume {self.run_dir}`")

    def train_one_epoch(self) -> dict:
        cfg, dev = self.cfg, self.device
        self.model.train()
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev, dtype=torch.long)
        seen, res = 0, resolution_at(cfg, self.progress())
        bar = tqdm(self.batches(self.epoch), total=self.per_epoch, desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                   leave=False, disable=None if distributed.is_main() else True, file=sys.stderr, dynamic_ncols=True)
        clock0, t0 = self.clock, time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        plan = (augment.MixPlan.draw(cfg.seed, self.epoch, self.per_epoch, cfg.mixup, cfg.cutmix)
                if cfg.mixup or cfg.cutmix else None)
        try:
            for i, (x, y) in enumerate(bar):
                if self.budget_spent():  # the clock of a GPU step lags (async), by a step or two at most
                    break
                res = resolution_at(cfg, self.progress())
                self.freeze_early()
                lr = self.set_lr()
                x, lam = resize(x, res), 1.0
                if plan is not None and mixing_at(cfg, self.progress()):
                    x, lam = augment.mix(x, plan, i)
                # train_acc counts the first image's label of a mixed pair
                logits, loss = self.train_step(x, y, lam)
                if self.ema:
                    self.ema.update(self.model)
                self.step += 1
                loss_sum += loss * len(y)
                correct += (logits.argmax(1) == y).sum()
                seen += len(y)
                if self.step % self.check_every == 0:
                    self.check_finite(loss_sum, lr)
                self.clock = self.agree(clock0 + time.perf_counter() - t0)
                self.estimate.after_step(self.step, self.clock)
        finally:
            bar.close()
        self.check_finite(loss_sum, lr)  # the steps since the last check
        self.check_weights(lr)
        # over every process's images; .item() (in tolist) waits for the device
        sums = torch.stack([loss_sum.double(), correct.double(), torch.tensor(seen, device=dev).double()])
        loss_sum, correct, seen = distributed.all_reduce_sum(sums).tolist()
        loss_mean, acc = loss_sum / seen, correct / seen
        train_s = time.perf_counter() - t0
        self.clock = self.agree(clock0 + train_s)
        return {"lr": lr, "res": res, "train_loss": loss_mean, "train_acc": acc, "train_s": train_s,
                "images_per_s": seen / train_s}

    def fit(self) -> dict:
        cfg = self.cfg
        while self.epoch < cfg.epochs and not self.budget_spent():
            t0 = time.perf_counter()
            row = self.train_one_epoch()
            self.epoch += 1
            last = self.epoch == cfg.epochs or self.budget_spent()
            val_loss = val_acc = None
            t1 = time.perf_counter()
            if self.data.val_y is not None and (last or (cfg.eval_every and self.epoch % cfg.eval_every == 0)):
                val_loss, val_acc = self.validate(in_budget=cfg.budget_includes_eval and not last)
            row = {"epoch": self.epoch, **row, "val_loss": val_loss, "val_acc": val_acc,
                   "epoch_s": time.perf_counter() - t0, "clock_s": self.clock, "eval_s": time.perf_counter() - t1}
            self.history.append({k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()})
            self.save(finished=last)
            self.log(format_row(row))
            if self.tensorboard:
                self.tensorboard.epoch(self.history[-1])
            if self.on_epoch:
                self.on_epoch(self, self.history[-1])
        if self.tensorboard:
            self.tensorboard.close()
        return self.history[-1] if self.history else {}

    def validate(self, in_budget: bool = False) -> tuple[float, float]:
        """Validation loss and accuracy (of the EMA weights when kept); tracks best and target. `in_budget`:
        the pass's time joins the training clock (before the target's time is read from it)."""
        t0 = time.perf_counter()
        judged = self.ema.model if self.ema else self.model
        distributed.broadcast_buffers(judged)  # one model judged: rank 0's BN statistics everywhere
        # as `evaluate` sees it: BatchNorm folded into a copy, the images at the size the model is
        # evaluated at (the last training resolution unless set); in eval_precision, as the test pass
        precision = resolve_precision(self.cfg.eval_precision, self.device)
        model = Model(self.card, judged, device=self.device, precision=precision)
        val_loss, val_acc = evaluate_loss_acc(model, self.data.val_x, self.data.val_y)
        if in_budget and self.cfg.time_budget:
            self.clock = self.agree(self.clock + time.perf_counter() - t0)
        if val_acc > self.best_acc:  # the same all-reduced accuracy on every process
            self.best_acc = val_acc
            if distributed.is_main():  # the only one that writes best.pt
                self.best_state = {"model": _clone(self.model), "epoch": self.epoch,
                                   "ema": _clone(self.ema.model) if self.ema else None}
        if self.cfg.target_acc and self.target is None and val_acc >= self.cfg.target_acc:
            self.target = {"val_acc": val_acc, "epoch": self.epoch, "train_s": round(self.clock, 3)}
            self.log(f"target {self.cfg.target_acc:.2%} reached: val {val_acc:.2%} at epoch {self.epoch}, "
                     f"{self.clock:.1f} s of training")
        return val_loss, val_acc


def _quiet(*_) -> None:
    pass


def _clone(model: nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def format_row(r: dict) -> str:
    val = f"  val loss {r['val_loss']:.3f} acc {r['val_acc']:.2%}" if r.get("val_acc") is not None else ""
    res = f"  {r['res']}px" if r.get("res", 32) != 32 else ""
    return (f"epoch {r['epoch']:>3}  lr {r['lr']:.4g}  train loss {r['train_loss']:.3f} acc {r['train_acc']:.2%}"
            f"{val}  {r['epoch_s']:.1f}s  {r['images_per_s']:.0f} img/s{res}")


def build_trainer(cfg: TrainConfig, run_dir: Path | str, log=print, on_epoch=None, init: bool = True) -> Trainer:
    """A Trainer with its parts made from `cfg`: device, data on the device, model (see build_model's
    `init`), optimizer."""
    cfg, device = prepare(cfg)
    with distributed.main_first():  # rank 0 downloads (if need be); the others then find the files
        tensors = load_data(cfg, device)
    model = build_model(cfg, device, tensors.train_x, init)
    return Trainer(cfg, Path(run_dir), model, build_optimizer(cfg, model), tensors, device, log, on_epoch)


def train(cfg: TrainConfig, run_dir: Path | str, log=print, on_epoch=None) -> Trainer:
    """Train a new run into `run_dir` (which must not hold anything yet), its only writer while it runs."""
    run_dir = Path(run_dir)
    with lock.claim_run(run_dir):
        trainer = build_trainer(cfg, run_dir, log, on_epoch)  # loads data first: a bad data dir leaves no folder
        if distributed.is_main():
            save_yaml(trainer.cfg.to_dict(), run_dir / "config.yaml")
            env = dict(checkpoint.environment(trainer.device), processes=trainer.world)
            checkpoint.atomic_write_json(run_dir / "env.json", env)
        length = f"{cfg.time_budget:g} s (at most {cfg.epochs} epochs)" if cfg.time_budget else f"{cfg.epochs} epochs"
        where = checkpoint.device_name(trainer.device) + (f" x {trainer.world} processes" if trainer.world > 1 else "")
        lr = (f", peak lr {peak_lr(cfg):g} (scaled from {cfg.lr:g} at batch {cfg.lr_ref_batch})"
              if cfg.lr_ref_batch else "")
        trainer.log(f"training {cfg.model} for {length} on {where}{lr} -> {run_dir}")
        _run(trainer)
    return trainer


def _run(trainer: Trainer) -> None:
    """Warm up (compile) and train; a device out of memory or a process that hangs ends it in one line."""
    with distributed.bounded_waits():
        try:
            if trainer.cfg.compile:
                seconds = trainer.warm_up()
                if trainer.forward is not trainer.ddp:
                    trainer.log(f"compiled and warmed up in {seconds:.1f} s (one-time cost, not in the training clock)")
            trainer.fit()
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            raise trainer.out_of_memory() from None


# where to run and what to log, not what to train
RESUMABLE = ("device", "threads", "data_dir", "download", "check_size", "tensorboard")
# what to train, changed on purpose to rescue a run (a lower --lr after it diverged); the run records it
ADJUSTABLE = ("lr",)


def resume_point(run_dir: Path | str, overrides: dict | None = None) -> tuple[TrainConfig, dict | None]:
    """The config and last checkpoint of a killed run; the checkpoint is None for a run stopped before its
    first one (it then starts again from its config.yaml). Only where-to-run settings and ADJUSTABLE ones
    may change on resume."""
    run_dir = Path(run_dir)
    last = run_dir / "last.pt"
    if last.is_file():
        state = checkpoint.load(last)
        checkpoint.check_training_state(state, str(last))
        if state.get("finished"):
            raise UserError(f"run {run_dir} already finished all {state['epoch']} epochs; nothing to resume "
                            f"(start a new run with another --out)")
        values, source = dict(state["config"]), last
    elif (run_dir / "config.yaml").is_file():  # stopped in its first epoch, before any checkpoint
        state, source = None, run_dir / "config.yaml"
        values = read_yaml(source, "run config")
    else:
        raise UserError(f"nothing to resume in {run_dir}: no last.pt (a run saves it after its first epoch); "
                        f"start a new run with --out")
    try:
        from_dict(values).validate()
    except UserError as e:
        raise UserError(f"{source} holds a config that is not valid ({e}); start a new run") from None
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    allowed = RESUMABLE + ADJUSTABLE
    for k, v in apply({}, given, "flag").items():
        if k not in allowed:
            raise UserError(f"--{k.replace('_', '-')} cannot change when resuming (the run's config is fixed); "
                            f"only {', '.join('--' + r.replace('_', '-') for r in allowed)} may")
        values[k] = v
    return from_dict(values).validate(), state


def resume(run_dir: Path | str, overrides: dict | None = None, log=print) -> Trainer:
    """Continue a run from its last.pt: it ends with the weights a straight run would have (unless --lr
    changed, which the run then records: `resumes` in its checkpoints, a comment in its config.yaml)."""
    with lock.hold_run(Path(run_dir)):  # before reading last.pt: a live run may be about to replace it
        return resume_from(run_dir, *resume_point(run_dir, overrides), log=log)


def resume_from(run_dir: Path | str, cfg: TrainConfig, state: dict | None, log=print) -> Trainer:
    """resume() from what resume_point() read (the CLI reads it once, to set the process up first), holding
    the run's lock, which the caller should already hold while it reads."""
    run_dir = Path(run_dir)
    with lock.hold_run(run_dir):
        return _resume(run_dir, cfg, state, log)


def _resume(run_dir: Path, cfg: TrainConfig, state: dict | None, log) -> Trainer:
    trainer = build_trainer(cfg, run_dir, log, init=state is None)  # a checkpoint holds the weights
    if distributed.is_main():  # the only writer of the folder
        for p in checkpoint.remove_stale_temps(run_dir):
            trainer.log(f"removed {p.name}, left by a write that was interrupted")
    if state is None:
        before = read_yaml(run_dir / "config.yaml", "run config")
        trainer.log(f"{run_dir} has no checkpoint yet (it stopped in its first epoch): training it from the start")
    else:
        trainer.restore(state)
        checkpoint.restore_rng(state, str(run_dir / "last.pt"))  # the global generators as they were when saved
        before = state["config"]
    changed = {k: [before.get(k), getattr(trainer.cfg, k)] for k in ADJUSTABLE
               if before.get(k) != getattr(trainer.cfg, k)}
    trainer.resumes.append({"epoch": trainer.epoch, "step": trainer.step, "clock_s": round(trainer.clock, 3),
                            **({"changed": changed} if changed else {})})
    note = "".join(f", {k} {a} -> {b} from here on" for k, (a, b) in changed.items())
    if changed and distributed.is_main():
        _record_changes(trainer)
    trainer.log(f"resuming {run_dir} at epoch {trainer.epoch}/{cfg.epochs}{note}")
    _run(trainer)
    return trainer


def _record_changes(trainer: Trainer) -> None:
    """config.yaml says the config the run trains with now, headed by what changed on which resume."""
    notes = "".join(f"# changed on resume at epoch {r['epoch']} (step {r['step']}): "
                    + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in r["changed"].items()) + "\n"
                    for r in trainer.resumes if r.get("changed"))
    save_yaml(trainer.cfg.to_dict(), trainer.run_dir / "config.yaml", header=notes)
