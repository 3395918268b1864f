"""Several processes, one model: torchrun + DistributedDataParallel on GPUs (NCCL) or CPUs (gloo).

Launched by torchrun (WORLD_SIZE, RANK, LOCAL_RANK in the environment) the trainer joins a process
group; launched plainly it never touches torch.distributed and runs exactly as one process always
did. Rank-0 discipline lives here: `is_main()` decides who prints, writes files and downloads.
See docs/distributed.md for the command lines and the design.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os

import torch
import torch.distributed as dist
import torch.nn as nn

from c100 import UserError

_clock_group = None  # a gloo group for CPU scalars (the training clock) when the main group is NCCL
TIMEOUT_ENV = "C100_DIST_TIMEOUT"
# s a process waits in a collective for the others before giving up (torch's default for gloo): rank 0 may
# download the data set (169 MB) while the others wait at a barrier
DEFAULT_TIMEOUT_S = 1800.0


def launched() -> bool:
    """True under torchrun (or any launcher that sets the env:// variables)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def world_size() -> int:
    return int(os.environ["WORLD_SIZE"]) if launched() else 1


def rank() -> int:
    return int(os.environ["RANK"]) if launched() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0)) if launched() else 0


def is_main() -> bool:
    return rank() == 0


def reports_errors() -> bool:
    """Rank 0 prints a user error; so does the first process on each other machine, since what differs
    between processes (data or run folder not shared, too few GPUs) differs between machines."""
    return is_main() or local_rank() == 0


def local_batch(batch_size: int) -> int:
    """Images per process per step: --batch-size is the global batch, split evenly over the processes."""
    world = world_size()
    if batch_size % world:
        raise UserError(f"--batch-size {batch_size} is the global batch and must split evenly over the {world} "
                        f"processes; use a multiple of {world} (e.g. {batch_size // world * world or world})")
    return batch_size // world


def setup(device: torch.device) -> torch.device:
    """Join the process group (once per process) and return this process's device: cuda:LOCAL_RANK on
    GPUs. Without torchrun: nothing happens and `device` comes back unchanged."""
    global _clock_group
    if not launched():
        return device
    if device.type == "mps":
        raise UserError("several processes need --device cuda or cpu (torch.distributed has no MPS backend)")
    if device.type == "cuda":
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size()))
        if per_node > torch.cuda.device_count():
            raise UserError(f"{per_node} processes on this machine but {torch.cuda.device_count()} GPUs visible; "
                            f"pass --nproc-per-node {torch.cuda.device_count()} or fewer")
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        nccl = device.type == "cuda"
        # the timeout turns a process that hangs (rather than dies, which torchrun notices) into an error on
        # the others: gloo raises it in the collective (bounded_waits), NCCL's watchdog aborts the process
        timeout = datetime.timedelta(seconds=timeout_s())
        dist.init_process_group("nccl" if nccl else "gloo", device_id=device if nccl else None, timeout=timeout)
        _clock_group = dist.new_group(backend="gloo", timeout=timeout) if nccl else None
    return device


def timeout_s() -> float:
    """Seconds a collective waits for the other processes: $C100_DIST_TIMEOUT, else DEFAULT_TIMEOUT_S."""
    value = os.environ.get(TIMEOUT_ENV, "").strip()
    if not value:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise UserError(f"{TIMEOUT_ENV}={value!r} is not a number of seconds above 0; e.g. {TIMEOUT_ENV}=600")
    return seconds


@contextlib.contextmanager
def bounded_waits():
    """A collective that timed out becomes one line: another process hangs (it did not die, or torchrun
    would have stopped this one), and this one gave up waiting for it."""
    try:
        yield
    except RuntimeError as e:
        if not (dist.is_initialized() and "timed out" in str(e).lower()):
            raise
        raise UserError(f"rank {rank()} waited {timeout_s():g} s for the other processes and gave up: one of them "
                        f"hangs (stuck in a data read, a device or a deadlock; its own output says where) or is "
                        f"gone; the last checkpoint is whole: `--resume` continues the run; where a step really "
                        f"takes longer, set {TIMEOUT_ENV} (seconds)") from None


def cleanup() -> None:
    global _clock_group
    if dist.is_initialized():
        # free the finished trainer's DDP reducer (and the gloo work it holds) now, not at interpreter
        # shutdown, where freeing it can abort the process; still seen once in CI after the barrier below
        gc.collect()
        # wait for every process first: one that tears its gloo threads down while rank 0 still writes
        # checkpoints can abort ("terminate called without an active exception")
        dist.barrier()
        dist.destroy_process_group()
        _clock_group = None


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (e.g. downloads the data); the others wait, then run it."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over the processes, in place (one process: unchanged)."""
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def agree_max(value: float) -> float:
    """The largest of every process's `value`: all ranks then take the same decisions from it (the
    time budget: when to stop, where the schedules are). A CPU scalar, so it never waits on a GPU."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_clock_group)
    return t.item()


def shard(n: int) -> slice:
    """This process's contiguous share of n items (sizes differ by one at most; no padding)."""
    return slice(n * rank() // world_size(), n * (rank() + 1) // world_size())


def broadcast_buffers(model: nn.Module) -> None:
    """Give every process rank 0's buffers (BN running statistics), which are per-process without
    SyncBatchNorm, so every rank evaluates the same model."""
    if dist.is_initialized():
        for b in model.buffers():
            dist.broadcast(b, 0)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `model` in a process group; the model itself otherwise."""
    if not dist.is_initialized():
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm statistics over the global batch instead of each process's slice of it (without it,
    N processes normalise by N different local statistics and no longer train like one)."""
    if not dist.is_initialized():
        return model
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():  # torch's SyncBatchNorm has GPU kernels only
        if type(child) is nn.BatchNorm2d:
            new = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats).to(device)
            new.load_state_dict(child.state_dict())
            setattr(model, name, new)
        else:
            sync_batchnorm(child, device)
    return model


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes, differentiable: the gradient of a sum of inputs is all-reduced too."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(t.clone())

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(grad.clone())


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d with training statistics over every process's batch, for CPUs: two differentiable
    all-reduces (the mean, then the variance about it: two passes, as BatchNorm's own kernels). The
    processes' batches are equal in size (the trainer splits the global batch evenly)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized()):
            return super().forward(x)
        n = x.numel() // x.shape[1] * dist.get_world_size()
        xf = x.float()
        mean = _AllReduceSum.apply(xf.sum((0, 2, 3))) / n
        centred = xf - mean.view(1, -1, 1, 1)
        var = _AllReduceSum.apply(centred.square().sum((0, 2, 3))) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked.item()
                self.running_mean.lerp_(mean, m)
                self.running_var.lerp_(var * n / (n - 1), m)  # unbiased, as BatchNorm keeps it
        y = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y.to(x.dtype)
