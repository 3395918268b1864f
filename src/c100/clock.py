"""The training clock: the seconds spent training, which --time-budget spends and which the schedules
follow under a budget. Checkpoints and compilation stay off it (compilation is timed apart, once), and
validation passes too unless budget_includes_eval. Under torchrun every process takes the slowest one's
time, so all stop at the same step and follow the same schedules (a process that stopped alone would
hang the others)."""

from __future__ import annotations

import time

from c100 import distributed
from c100.progress import TimeEstimate


class Clock:
    """Time a stretch of steps with start(), tick() after each step and stop(); add() puts a validation
    pass on the clock. `estimate` (if any) is told the clock after every step."""

    def __init__(self, budget: float, estimate: TimeEstimate | None = None):
        self.budget = budget  # seconds of training; 0: no budget, the run trains its epochs
        self.seconds = 0.0  # on the clock so far, the runs this one resumed included
        self.compile_s = 0.0  # the one-time cost of compilation and warm-up, measured apart
        self.estimate = estimate
        self._stretch = (0.0, time.perf_counter())  # (the clock, perf_counter) when the stretch started

    def spent(self) -> bool:
        return bool(self.budget) and self.seconds >= self.budget

    def fraction(self) -> float:
        """The fraction of the budget spent, at most 1."""
        return min(1.0, self.seconds / self.budget)

    def start(self) -> None:
        self._stretch = (self.seconds, time.perf_counter())

    def tick(self, step: int) -> None:
        """After optimizer step `step`: the clock stands at the stretch's start plus its time so far."""
        start, t0 = self._stretch
        self.seconds = self._agree(start + time.perf_counter() - t0)
        if self.estimate:
            self.estimate.after_step(step, self.seconds)

    def stop(self) -> float:
        """The stretch's seconds; the clock stands at its end."""
        start, t0 = self._stretch
        seconds = time.perf_counter() - t0
        self.seconds = self._agree(start + seconds)
        return seconds

    def add(self, seconds: float) -> None:
        """Time spent off the steps (a validation pass): on the clock only under a budget, which it spends."""
        if self.budget:
            self.seconds = self._agree(self.seconds + seconds)

    def _agree(self, seconds: float) -> float:
        return distributed.agree_max(seconds) if self.budget else seconds

    # -- in checkpoints --------------------------------------------------------------------------
    def state(self) -> dict:
        return {"clock_s": self.seconds, "compile_s": self.compile_s}

    def restore(self, progress: dict) -> None:
        self.seconds = progress["clock_s"]
        self.compile_s += progress["compile_s"]  # this session's warm-up ran before the checkpoint was read
