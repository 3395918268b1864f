"""torch.compile for training, paid before the clock starts: a few steps at every training resolution
compile the step (and record CUDA graphs) with lr 0, and every state is put back after, so the run then
trains as if they never happened. A compiler that fails leaves the run in eager mode, with a warning."""

from __future__ import annotations

import copy
import itertools
import sys
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn as nn

from c100.augment import resize
from c100.config import TrainConfig
from c100.device import is_out_of_memory

STEPS = 3  # per resolution: dynamo compiles at the first call and may recompile at the second


def compiled(module: nn.Module, cfg: TrainConfig) -> nn.Module:
    """The step's forward: `module` (the DDP wrapper under torchrun), compiled when cfg asks."""
    if not cfg.compile:
        return module
    mode = None if cfg.compile_mode == "default" else cfg.compile_mode
    # Compiling the DDP module lets dynamo split the graph at the gradient buckets, so communication
    # overlaps the backward pass. dynamic=False: one static graph per training resolution (progressive
    # resizing) rather than a slower shape-generic graph after the second shape.
    return torch.compile(module, mode=mode, dynamic=False)


def warm_up(trainer) -> float:
    """Warm a Trainer up before its clock starts; returns the seconds it took, which its clock keeps apart
    (compile_s). A failed compilation (not a device out of memory) makes it run_eager()."""
    t0 = time.perf_counter()
    try:
        steps_at_lr_0(trainer.train_step, trainer.warm_up_batches(), trainer.model, trainer.optimizer,
                      trainer.cfg.resolutions)
    except Exception as e:  # noqa: BLE001 - whatever the compiler raised; eager mode shows a real bug anew
        if is_out_of_memory(e) or trainer.forward is trainer.ddp:
            raise
        trainer.run_eager(e)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
    seconds = time.perf_counter() - t0
    trainer.timer.compile_s += seconds
    return seconds


def steps_at_lr_0(step: Callable, batches: Iterator, model: nn.Module, optimizer: torch.optim.Optimizer,
                  resolutions: list) -> None:
    """STEPS calls of `step(x, y)` at every resolution with lr 0; the weights, BatchNorm statistics and
    optimizer state are then put back, whatever happened."""
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(optimizer.state_dict())
    for g in optimizer.param_groups:
        g["lr"] = 0.0
    try:
        for res in sorted({int(r) for r in resolutions} or {32}):
            for _ in range(STEPS):
                x, y = next(batches)
                step(resize(x, res), y)
    finally:
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_opt)


def spare_batches(batches: Callable[[int], Iterator]) -> Iterator:
    """Batches from epochs no training run uses (-2, -3, ...), as many as asked for: a small training
    set may have fewer batches per epoch than the warm-up takes."""
    for epoch in itertools.count(2):
        yield from batches(-epoch)


def warn_eager(error: Exception) -> None:
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    print(f"c100: warning: torch.compile failed ({type(error).__name__}: {reason}); training in eager "
          f"mode (the same run, slower); --no-compile skips the attempt", file=sys.stderr, flush=True)
