"""The training loop: its builders (data, model, optimizer), the Trainer, and train / resume.

The Trainer's parts live beside it: the clock and time budget (clock.py), the run folder's checkpoints and
best model (checkpointing.py), what a checkpoint holds to resume (training_state.py), the divergence guard
(divergence.py), the compile warm-up (warmup.py), the batches (augment.py) and schedules (schedule.py).

`train(cfg, run_dir)` runs a new training; `resume(run_dir)` continues a killed one from its last
checkpoint and ends with the same weights an uninterrupted run would have (same seed, CPU,
deterministic): batches depend only on (seed, epoch), and the checkpoint holds every other state.
Under torchrun the same code runs as N processes that train like one (docs/distributed.md): each takes
its slice of every global batch, DDP averages the gradients, and only rank 0 logs and writes.
"""

from __future__ import annotations

import copy
import dataclasses
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

from c100 import UserError, augment, checkpoint, data, distributed, divergence, lock, warmup
from c100.atomic import atomic_write_json, remove_stale_temps
from c100.augment import AugmentSpec, EpochBatches, Normalize, resize, steps_per_epoch
from c100.card import model_card
from c100.checkpointing import Checkpoints
from c100.clock import Clock
from c100.config import TrainConfig, apply, from_dict, keys, read_yaml, save_yaml
from c100.device import OutOfMemoryError as _OOM  # noqa: F401 - the tests raise it as a GPU does
from c100.device import autocast, is_out_of_memory, resolve_precision, select_device
from c100.divergence import Diverged  # noqa: F401 - raised by the loop; callers catch it as c100.train.Diverged
from c100.fused_sgd import FusedSGD
from c100.hard_examples import HardExamples
from c100.inference import Model, load
from c100.lookahead import Lookahead
from c100.machine import device_name, environment
from c100.models import create_model
from c100.models.cpu_conv import small_map_gemm
from c100.models.resnet import early_parameters
from c100.models.whiten import stem_conv, whiten_stem
from c100.progress import TensorBoard, TimeEstimate
from c100.schedule import lr_factor, mixing_at, peak_lr, resolution_at
from c100.training_state import check_training_state, restore_rng, restore_training, training_state

WHITEN_IMAGES = 5000  # enough for a stable 27 x 27 patch covariance (5000 x 900 patches)


class OutOfMemory(UserError):
    """The device ran out of memory: training stopped; the last checkpoint is whole."""


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
    if cfg.freeze_early_at and distributed.world_size() > 1:
        raise UserError("--freeze-early-at does not run under torchrun (DDP expects every gradient); drop it")
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


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer | Lookahead:
    # Weight decay on conv/linear weights only: decaying BN scales and biases only hurts.
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    lr = peak_lr(cfg)
    # One fused kernel per step instead of a pass over every weight per arithmetic op (fused_sgd.py)
    fused = {p.device.type for p in model.parameters()} <= {"cpu", "cuda"}
    if cfg.optimizer == "sgd":
        cls = FusedSGD if fused else torch.optim.SGD
        optimizer = cls(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    else:
        cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        optimizer = cls(groups, lr=lr, betas=(cfg.momentum, 0.999), eps=cfg.adam_eps, fused=fused)
    return Lookahead(optimizer, cfg.lookahead_k, cfg.lookahead_alpha) if cfg.lookahead_k else optimizer


def l2_penalty(params: list[torch.Tensor]) -> torch.Tensor:
    """sum(w^2) / 2 over all trainable weights, as tf.nn.l2_loss computes it."""
    return torch.stack([p.float().pow(2).sum() for p in params]).sum() / 2


class EMA:
    """Exponential moving average of the weights; BN statistics are copied, not averaged."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, follow: bool = False) -> None:
        """One step of the average; `follow`: copy the weights instead (before --ema-from)."""
        ema_p = [p for p in self.model.parameters()]
        cur_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, cur_p, 1.0 if follow else 1.0 - self.decay)
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


class Tally:
    """An epoch's training loss and accuracy, summed on the device (no wait for it at each step) and over
    every process's images at the end. The accuracy of a mixed pair counts its first image's label."""

    def __init__(self, device: torch.device):
        self.device, self.seen = device, 0
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)

    def add(self, logits: torch.Tensor, loss: torch.Tensor, y: torch.Tensor) -> None:
        self.loss_sum += loss * len(y)
        self.correct += (logits.argmax(1) == y).sum()
        self.seen += len(y)

    def all_reduced(self) -> tuple[float, float, float]:
        """Mean loss, accuracy and the images seen, over every process (.item() in tolist waits for the device)."""
        sums = torch.stack([self.loss_sum.double(), self.correct.double(),
                            torch.tensor(self.seen, device=self.device).double()])
        loss_sum, correct, seen = distributed.all_reduce_sum(sums).tolist()
        return loss_sum / seen, correct / seen, seen


class Trainer:
    """The loop of one run: `fit()` trains epoch after epoch to cfg.epochs (or to the end of the time
    budget), `train_one_epoch()` runs its steps, `train_step()` is one optimizer step, `validate()` judges
    the weights. It is handed its parts (`build_trainer` makes them from a config): the model, optimizer
    and data; the clock, which keeps the time budget (clock.py); the checkpoints, which write the run
    folder and track the best model (checkpointing.py). `run_steps(n)` runs steps alone, for benchmarks."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                 data: Tensors, device: torch.device, clock: Clock, checkpoints: Checkpoints, log=print,
                 on_epoch=None):
        # on_epoch(trainer, row) runs after each epoch is saved (e.g. Optuna's pruning); may raise
        self.cfg, self.run_dir, self.on_epoch = cfg, Path(run_dir), on_epoch
        self.model, self.optimizer, self.data, self.device = model, optimizer, data, device
        self.timer, self.checkpoints = clock, checkpoints
        self.log = log if distributed.is_main() else _quiet  # rank-0 discipline: one voice, one set of files
        self.world, self.rank = distributed.world_size(), distributed.rank()
        self.per_epoch = steps_per_epoch(len(data.train_y), cfg.batch_size)
        # --keep-hardest: later epochs draw from the images whose loss was highest (hard_examples.py)
        self.hard = HardExamples(len(data.train_y), cfg.keep_hardest, device) if cfg.keep_hardest < 1 else None
        self.total_steps = self.hard.steps(cfg.epochs, cfg.batch_size) if self.hard else self.per_epoch * cfg.epochs
        self.step, self.epoch, self.history = 0, 0, []
        self.check_every = divergence.check_every(device)  # steps between divergence checks
        self.batches = EpochBatches(data.train_x, data.train_y, cfg.batch_size, AugmentSpec(
            cfg.translate, cfg.pad_mode, cfg.flip, cfg.cutout), Normalize(cfg.normalize, device), cfg.seed, device,
            cfg.alt_flip, self.rank, self.world)  # batches(epoch): that epoch's, as (seed, epoch) fix them
        # Frozen from cfg.freeze_early_at on (FreezeOut, Brock et al. 2017): with nothing before them to
        # train, autograd then skips the backward of the stem and layer1, the largest maps.
        self.early = early_parameters(model) if cfg.freeze_early_at else []
        self.ema = EMA(model, cfg.ema) if cfg.ema else None
        self.l2_params = [p for p in model.parameters() if p.requires_grad] if cfg.l2 else []
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        self.ddp = distributed.wrap(model, device)  # under torchrun: averages the gradients in backward
        self.forward = warmup.compiled(self.ddp, cfg)
        # oneDNN is slow on tiny maps: as GEMMs, their convolutions run the cpu-fast step 1.4x faster at
        # 16 and 24 px in bf16 on an AMX Xeon (models/cpu_conv.py); compiled, they stay oneDNN's
        self.gemm_convs = device.type == "cpu" and not cfg.compile
        self.card = model_card(cfg, data.meta.fine_names, data.meta.coarse_names, data.meta.fine_to_coarse)
        self.tensorboard = TensorBoard(self.run_dir) if cfg.tensorboard and distributed.is_main() else None

    # -- the loop -------------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg = self.cfg
        while self.epoch < cfg.epochs and not self.timer.spent():
            t0 = time.perf_counter()
            row = self.train_one_epoch()
            self.epoch += 1
            last = self.epoch == cfg.epochs or self.timer.spent()
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

    def train_one_epoch(self, steps: int | None = None) -> dict:
        """The epoch's steps (its first `steps` only, if given); returns its row of metrics, unvalidated."""
        cfg = self.cfg
        self.model.train()
        tally, res = Tally(self.device), resolution_at(cfg, self.progress())
        subset = self.hard.subset(self.epoch) if self.hard else None
        per_epoch = self.per_epoch if subset is None else steps_per_epoch(len(subset), cfg.batch_size)
        batches = itertools.islice(self.batches(self.epoch, subset, with_index=self.hard is not None), steps)
        bar = tqdm(batches, total=min(steps or per_epoch, per_epoch), leave=False, file=sys.stderr,
                   desc=f"epoch {self.epoch + 1}/{cfg.epochs}", disable=None if distributed.is_main() else True,
                   dynamic_ncols=True)
        self.timer.start()
        lr = self.optimizer.param_groups[0]["lr"]
        plan = (augment.MixPlan.draw(cfg.seed, self.epoch, self.per_epoch, cfg.mixup, cfg.cutmix)
                if cfg.mixup or cfg.cutmix else None)
        try:
            for i, (x, y, *idx) in enumerate(bar):
                if self.timer.spent():  # the clock of a GPU step lags (async), by a step or two at most
                    break
                res, lr, mixing = self.follow_schedules()
                x, lam = resize(x, res), 1.0
                if plan is not None and mixing:
                    x, lam = augment.mix(x, plan, i)
                logits, loss = self.train_step(x, y, lam)
                if self.hard:
                    self.hard.record(idx[0], loss)
                    loss = loss.mean()
                if self.ema:
                    self.ema.update(self.model, follow=cfg.ema_from > 0 and self.progress() < cfg.ema_from)
                self.step += 1
                tally.add(logits, loss, y)
                if self.step % self.check_every == 0:
                    self.check_finite(tally.loss_sum, lr)
                self.timer.tick(self.step)
        finally:
            bar.close()
        if self.hard:
            self.hard.end_epoch()
        self.check_finite(tally.loss_sum, lr, weights=True)  # the steps since the last check, and the weights
        loss, acc, seen = tally.all_reduced()
        train_s = self.timer.stop()
        return {"lr": lr, "res": res, "train_loss": loss, "train_acc": acc, "train_s": train_s,
                "images_per_s": seen / train_s}

    def run_steps(self, n: int) -> dict:
        """`n` steps (at most an epoch's) as fit() runs them, on the current epoch's first n batches (the same
        at each call), without validation, checkpoints or an epoch counted: for benchmarks, which read the
        row's "images_per_s"."""
        return self.train_one_epoch(steps=n)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, lam: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step at the current lr; returns the logits and the (unpenalised) loss, per image
        when hard examples are chosen. lam < 1: x is a MixUp/CutMix batch, lam of each image from y, the
        rest from y reversed."""
        cfg = self.cfg
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with small_map_gemm(self.gemm_convs):
            with autocast(cfg.precision, self.device):
                logits = self.forward(x)
                reduction = "none" if self.hard else "mean"
                losses = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing, reduction=reduction)
                if lam < 1:
                    other = F.cross_entropy(logits, y.flip(0), label_smoothing=cfg.label_smoothing,
                                            reduction=reduction)
                    losses = lam * losses + (1 - lam) * other
                loss = losses.mean() if self.hard else losses
            total = loss + cfg.l2 * l2_penalty(self.l2_params) if cfg.l2 else loss
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
        if cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return logits.detach(), losses.detach()

    def validate(self, in_budget: bool = False) -> tuple[float, float]:
        """Validation loss and accuracy (of the EMA weights when kept), which the checkpoints judge (best,
        target). `in_budget`: the pass's time joins the training clock (before the target's time is read)."""
        t0 = time.perf_counter()
        judged = self.ema.model if self.ema else self.model
        distributed.broadcast_buffers(judged)  # one model judged: rank 0's BN statistics everywhere
        # as `evaluate` sees it: BatchNorm folded into a copy, the images at the size the model is
        # evaluated at (the last training resolution unless set); in eval_precision, as the test pass
        precision = resolve_precision(self.cfg.eval_precision, self.device)
        model = Model(self.card, judged, device=self.device, precision=precision)
        val_loss, val_acc = evaluate_loss_acc(model, self.data.val_x, self.data.val_y)
        if in_budget:
            self.timer.add(time.perf_counter() - t0)
        self.checkpoints.judge(val_acc, self.epoch, self.model, self.ema.model if self.ema else None, self.clock)
        return val_loss, val_acc

    # -- the loop's helpers ---------------------------------------------------------------------
    def progress(self) -> float:
        """Fraction of training done: of the time budget when there is one, else of the steps."""
        return self.timer.fraction() if self.cfg.time_budget else self.step / self.total_steps

    def follow_schedules(self) -> tuple[int, float, bool]:
        """This step's resolution, lr (set in the optimizer) and whether MixUp/CutMix apply, from the progress
        (schedule.py); the early layers freeze once it reaches freeze_early_at: a resumed run freezes them at
        the same step as a straight one."""
        cfg, progress = self.cfg, self.progress()
        if self.early and self.early[-1].requires_grad and progress >= cfg.freeze_early_at:
            for p in self.early:
                p.requires_grad_(False)
        lr = peak_lr(cfg) * lr_factor(cfg, self.step, self.total_steps, self.per_epoch,
                                      progress if cfg.time_budget else None)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return resolution_at(cfg, progress), lr, mixing_at(cfg, progress)

    def check_finite(self, loss_sum: torch.Tensor, lr: float, weights: bool = False) -> None:
        """The divergence guard (divergence.py): stop when the loss (with `weights`: also the weights, their
        average and the BatchNorm statistics, checked before every save) became NaN or infinite."""
        nets = [self.model] + ([self.ema.model] if self.ema else []) if weights else []
        divergence.check(loss_sum, nets, lambda what: divergence.diverged(
            what, self.cfg, self.run_dir, self.epoch, self.step, lr, self.check_every))

    # -- compilation (warmup.py) -------------------------------------------------------------------
    def warm_up(self) -> float:
        """Compile before the clock starts, leaving no trace; returns the seconds it took."""
        return warmup.warm_up(self)

    def warm_up_batches(self):
        return warmup.spare_batches(self.batches)

    def run_eager(self, error: Exception) -> None:
        """Train without torch.compile from here on (a compiler missing or failing on this machine)."""
        self.forward, self.gemm_convs = self.ddp, self.device.type == "cpu"
        if distributed.is_main():
            warmup.warn_eager(error)

    # -- checkpoints ----------------------------------------------------------------------------
    def save(self, finished: bool) -> None:
        if distributed.is_main():
            self.checkpoints.save(self.state(finished), self.history)

    def state(self, finished: bool) -> dict:
        progress = {"step": self.step, "total_steps": self.total_steps, "epoch": self.epoch,
                    "history": self.history, **self.timer.state(), **self.checkpoints.state(),
                    "example_losses": self.hard.state() if self.hard else None}
        return training_state(self.cfg.to_dict(), self.model, self.ema.model if self.ema else None, self.optimizer,
                              self.scaler, self.data.meta, progress, finished)

    def restore(self, state: dict) -> None:
        """Every state of the loop from a checkpoint (the global generator is the caller's: resume())."""
        p = restore_training(state, self.model, self.ema.model if self.ema else None, self.optimizer, self.scaler,
                             str(self.run_dir / "last.pt"))
        self.step, self.epoch, self.history = p["step"], p["epoch"], p["history"]
        if self.hard:
            self.hard.restore(p["example_losses"])
        self.timer.restore(p)
        self.checkpoints.restore(p)

    # -- what the parts keep, as the loop's own --------------------------------------------------
    clock = property(lambda self: self.timer.seconds, doc="seconds on the training clock")
    compile_s = property(lambda self: self.timer.compile_s, doc="seconds of compilation and warm-up")
    best_acc = property(lambda self: self.checkpoints.best_acc, doc="the best validation accuracy so far")
    target = property(lambda self: self.checkpoints.target, doc="when the target accuracy was first reached")


def out_of_memory(trainer: Trainer) -> OutOfMemory:
    """The one line for a device that ran out of memory: where, at which batch size, and what to try."""
    cfg, epoch, world = trainer.cfg, trainer.epoch, trainer.world
    kept = f"last.pt holds epoch {epoch}" if epoch else "no checkpoint was written"
    per = f" ({cfg.batch_size // world} per process)" if world > 1 else ""
    return OutOfMemory(f"out of memory on {device_name(trainer.device)} at batch size {cfg.batch_size}{per}, in "
                       f"epoch {epoch + 1} at step {trainer.step}; {kept}: start again with a smaller --batch-size "
                       f"(e.g. {max(1, cfg.batch_size // 2)}), or free the device's memory (other processes on it) "
                       f"or spread the batch over more processes (torchrun --nproc-per-node N) and continue with "
                       f"`c100 train --resume {trainer.run_dir}`")


def _quiet(*_) -> None:
    pass


def format_row(r: dict) -> str:
    val = f"  val loss {r['val_loss']:.3f} acc {r['val_acc']:.2%}" if r.get("val_acc") is not None else ""
    res = f"  {r['res']}px" if r.get("res", 32) != 32 else ""
    return (f"epoch {r['epoch']:>3}  lr {r['lr']:.4g}  train loss {r['train_loss']:.3f} acc {r['train_acc']:.2%}"
            f"{val}  {r['epoch_s']:.1f}s  {r['images_per_s']:.0f} img/s{res}")


def build_trainer(cfg: TrainConfig, run_dir: Path | str, log=print, on_epoch=None, init: bool = True) -> Trainer:
    """A Trainer with its parts made from `cfg`: device, data on the device, model (see build_model's
    `init`), optimizer, clock and checkpoints."""
    cfg, device = prepare(cfg)
    with distributed.main_first():  # rank 0 downloads (if need be); the others then find the files
        tensors = load_data(cfg, device)
    model = build_model(cfg, device, tensors.train_x, init)
    log = log if distributed.is_main() else _quiet
    steps = steps_per_epoch(len(tensors.train_y), cfg.batch_size) * cfg.epochs
    estimate = TimeEstimate(steps, cfg.time_budget, device.type == "cpu", cfg.resolutions, log,
                            passes_on_clock=cfg.budget_includes_eval)
    return Trainer(cfg, Path(run_dir), model, build_optimizer(cfg, model), tensors, device,
                   Clock(cfg.time_budget, estimate), Checkpoints(run_dir, cfg.target_acc, log), log, on_epoch)


def train(cfg: TrainConfig, run_dir: Path | str, log=print, on_epoch=None) -> Trainer:
    """Train a new run into `run_dir` (which must not hold anything yet), its only writer while it runs."""
    run_dir = Path(run_dir)
    with lock.claim_run(run_dir):
        trainer = build_trainer(cfg, run_dir, log, on_epoch)  # loads data first: a bad data dir leaves no folder
        if distributed.is_main():
            save_yaml(trainer.cfg.to_dict(), run_dir / "config.yaml")
            env = dict(environment(trainer.device), processes=trainer.world)
            atomic_write_json(run_dir / "env.json", env)
        length = f"{cfg.time_budget:g} s (at most {cfg.epochs} epochs)" if cfg.time_budget else f"{cfg.epochs} epochs"
        where = device_name(trainer.device) + (f" x {trainer.world} processes" if trainer.world > 1 else "")
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
            raise out_of_memory(trainer) from None


# where to run and what to log, not what to train (the config's "run" group)
RESUMABLE = keys("run")
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
        check_training_state(state, str(last))
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
        for p in remove_stale_temps(run_dir):
            trainer.log(f"removed {p.name}, left by a write that was interrupted")
    if state is None:
        before = read_yaml(run_dir / "config.yaml", "run config")
        trainer.log(f"{run_dir} has no checkpoint yet (it stopped in its first epoch): training it from the start")
    else:
        trainer.restore(state)
        restore_rng(state, str(run_dir / "last.pt"))  # the global generators as they were when saved
        before = state["config"]
    changed = {k: [before.get(k), getattr(trainer.cfg, k)] for k in ADJUSTABLE
               if before.get(k) != getattr(trainer.cfg, k)}
    resume = {"epoch": trainer.epoch, "step": trainer.step, "clock_s": round(trainer.clock, 3)}
    trainer.checkpoints.resumes.append({**resume, **({"changed": changed} if changed else {})})
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
                    for r in trainer.checkpoints.resumes if r.get("changed"))
    save_yaml(trainer.cfg.to_dict(), trainer.run_dir / "config.yaml", header=notes)
