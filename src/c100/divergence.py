"""The divergence guard: training stops at once when the loss or the weights became NaN or infinite (on
every process alike), before a bad step is saved, so the last checkpoint stays the last good one; the
error says where it happened and how to continue from that checkpoint."""

from __future__ import annotations

import torch

from c100 import UserError, distributed
from c100.config import TrainConfig

# Steps between checks that the loss is finite where the device runs ahead of Python (GPUs): each check
# waits for the device. On the CPU every step is checked, at no cost.
FINITE_CHECK_EVERY = 50


class Diverged(UserError):
    """The loss or the weights became NaN or infinite: training stopped before saving anything after it."""


def check_every(device: torch.device) -> int:
    return 1 if device.type == "cpu" else FINITE_CHECK_EVERY


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Every tensor finite on every process: an all-reduce, which every process must call alike."""
    bad = torch.stack([~torch.isfinite(t).all() for t in tensors]).double().sum().reshape(1)
    return not distributed.all_reduce_sum(bad).item()


def check(loss_sum: torch.Tensor, nets: list, error) -> None:
    """Raise error(what) when the loss, then the weights and buffers of `nets` (none: not checked), are
    not finite on every process; all take the same branch, as the results are all-reduced."""
    if not all_finite([loss_sum]):
        raise error("the loss became NaN or infinite")
    if nets and not all_finite([t for net in nets for t in net.state_dict().values() if t.is_floating_point()]):
        raise error("the weights became NaN or infinite")


def diverged(what: str, cfg: TrainConfig, run_dir, epoch: int, step: int, lr: float, every: int) -> Diverged:
    """The one line for `what` ("the loss became NaN or infinite") in 0-based `epoch` at `step`."""
    when = f"step {step}" if every == 1 else f"step {step} (checked every {every})"
    cause = ("the learning rate is too high, or fp16 overflowed (try --precision bf16)"
             if cfg.precision == "fp16" else "the learning rate is likely too high")
    kept = f"last.pt still holds epoch {epoch}" if epoch else "no checkpoint was written"
    return Diverged(f"training diverged: {what} in epoch {epoch + 1} at {when}, lr {lr:.4g}: {cause}; {kept}: "
                    f"continue with a lower peak lr, e.g. `c100 train --resume {run_dir} --lr {cfg.lr / 10:g}`")
