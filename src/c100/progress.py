"""What a user watching training sees besides tqdm's bar: the estimated training time after the first
few dozen steps (with a pointer to the fast preset when it runs to hours on a CPU) and, optionally, the
per-epoch metrics as TensorBoard scalars."""

from __future__ import annotations

from pathlib import Path

from c100 import UserError

TIMED_STEPS = (10, 40)  # steps timed for the estimate: past the first steps' one-time costs, still early
LONG_ON_CPU_S = 2 * 3600


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class TimeEstimate:
    """Call `after_step(step, clock)` after every optimizer step (clock = the training clock so far:
    validation excluded unless budget_includes_eval); it logs one estimate once TIMED_STEPS[1] steps of
    this session are timed."""

    def __init__(self, total_steps: int, time_budget: float, on_cpu: bool, resolutions: list, log,
                 passes_on_clock: bool = False):
        self.total, self.budget, self.on_cpu, self.log = total_steps, time_budget, on_cpu, log
        self.passes_on_clock = passes_on_clock
        self.progressive = len(resolutions) > 1
        self.start: tuple[int, float] | None = None
        self.first_step: int | None = None
        self.done = False

    def after_step(self, step: int, clock: float) -> None:
        if self.done:
            return
        if self.first_step is None:
            self.first_step = step - 1
        n = step - self.first_step
        if n == TIMED_STEPS[0]:
            self.start = (step, clock)
        elif n == TIMED_STEPS[1] and self.start:
            self.done = True
            self.log(self.message((clock - self.start[1]) / (step - self.start[0]), step, clock))

    def message(self, per_step: float, step: int, clock: float) -> str:
        at = " at the first resolution (the larger ones later are slower)" if self.progressive else ""
        if self.budget:
            steps = max(0.0, self.budget - clock) / per_step
            # passes on the clock (budget_includes_eval) take their share of it: an upper bound then
            about, share = (("at most", "; validation passes on the clock take their share") if self.passes_on_clock
                            else ("about", ""))
            return (f"training for the {duration(self.budget)} budget: {about} {step + steps:,.0f} steps in all at "
                    f"{per_step:.3f} s per step{at}{share}")
        left = (self.total - step) * per_step
        text = (f"estimated training time: {duration(clock + left)} ({duration(left)} to go, {per_step:.3f} s per "
                f"step{at}; validation passes come on top)")
        if self.on_cpu and clock + left > LONG_ON_CPU_S:
            text += ("\nthat is over two hours on this CPU: the cpu-fast preset trains ResNet18 in 30 minutes "
                     "(`c100 train --preset cpu-fast`)")
        return text


class TensorBoard:
    """The columns of metrics.csv as TensorBoard scalars in RUN/tensorboard, one point per epoch."""

    GROUPS = {"train_loss": "loss/train", "val_loss": "loss/val", "train_acc": "accuracy/train",
              "val_acc": "accuracy/val", "lr": "lr", "res": "resolution", "images_per_s": "speed/images_per_s",
              "epoch_s": "time/epoch_s", "clock_s": "time/clock_s", "eval_s": "time/eval_s"}

    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("--tensorboard needs the tensorboard package: pip install 'c100[tensorboard]'") from None
        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def epoch(self, row: dict) -> None:
        for key, tag in self.GROUPS.items():
            if row.get(key) is not None:
                self.writer.add_scalar(tag, row[key], row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
