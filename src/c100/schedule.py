"""The schedules of a run, as functions of its config and of how far it has come: the peak learning rate
and its multiplier per step (by step count, or by the clock under --time-budget), the training
resolution (progressive resizing) and whether MixUp/CutMix apply."""

from __future__ import annotations

import math

from c100.config import TrainConfig


def peak_lr(cfg: TrainConfig) -> float:
    """--lr, scaled linearly with the global batch when --lr-ref-batch names the batch it was tuned for."""
    return cfg.lr * cfg.batch_size / cfg.lr_ref_batch if cfg.lr_ref_batch else cfg.lr


def lr_factor(cfg: TrainConfig, step: int, total: int, per_epoch: int, progress: float | None = None) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based) of `total`.

    With a time budget, `progress` is the fraction of the budget spent and the schedule follows it:
    the warm-up still counts steps, the decay follows the clock, and the lower of the two wins."""
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "inverse-time":  # Keras' legacy `decay`: lr / (1 + decay * iterations)
        return 1.0 / (1.0 + cfg.lr_decay * step)
    if progress is not None:
        return _budget_factor(cfg, step, per_epoch, progress)
    if cfg.schedule == "multistep":
        return cfg.gamma ** sum(step >= m * total for m in cfg.milestones)
    warm = min(cfg.warmup_epochs * per_epoch, total // 4)  # short runs keep most steps for the decay
    if step < warm:
        return (step + 1) / (warm + 1)
    # a step past the planned total (a benchmark's extra rounds) stays at the end: lr 0, never negative
    p = min(1.0, (step - warm) / max(1.0, total - warm))
    if cfg.schedule == "onecycle":  # linear warm-up, then linear decay to zero
        return 1.0 - p
    return 0.5 * (1.0 + math.cos(math.pi * p))  # cosine to zero


def _budget_factor(cfg: TrainConfig, step: int, per_epoch: int, p: float) -> float:
    if cfg.schedule == "multistep":
        return cfg.gamma ** sum(p >= m for m in cfg.milestones)
    warm = cfg.warmup_epochs * per_epoch
    ramp = (step + 1) / (warm + 1) if step < warm else 1.0
    decay = 1.0 - p if cfg.schedule == "onecycle" else 0.5 * (1.0 + math.cos(math.pi * p))
    return max(0.0, min(ramp, decay))


def resolution_at(cfg: TrainConfig, progress: float) -> int:
    """Training resolution at a fraction of training (progressive resizing); 32 without it."""
    if not cfg.resolutions:
        return 32
    return int(cfg.resolutions[sum(progress >= m for m in cfg.res_milestones)])


def mixing_at(cfg: TrainConfig, progress: float) -> bool:
    """Whether MixUp/CutMix apply at a fraction of training: inside [mix_from, mix_until), when either is on."""
    return bool(cfg.mixup or cfg.cutmix) and cfg.mix_from <= progress < cfg.mix_until
