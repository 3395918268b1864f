"""The one timing loop of the benchmarks: warm-up, rounds that alternate between what is compared, medians.

A 2-core cloud VM's speed drifts by several percent within minutes (another tenant, the clock), so two
things are never timed one after the other in blocks: each round runs every candidate once, in turn
(a, b, c, a, b, c, ...), and the figures are medians over rounds, or medians of per-round ratios, which
the drift cancels out of. The first rounds warm up caches, allocators and autotuners, and are discarded.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable


def alternate(candidates: dict[str, Callable[[], float]], rounds: int, warmup: int = 1,
              log: Callable[[str], None] | None = print, unit: str = "img/s") -> dict[str, list[float]]:
    """Each candidate's measurement (what its callable returns, e.g. images per second) in each of
    `rounds` timed rounds, after `warmup` rounds that run alike and are discarded; one line per round
    through `log` (None: silent)."""
    kept: dict[str, list[float]] = {name: [] for name in candidates}
    for r in range(warmup + rounds):
        row = {name: fn() for name, fn in candidates.items()}
        if log:
            label = f"warm-up {r + 1} (discarded)" if r < warmup else f"round {r - warmup + 1}"
            log(f"{label}: " + ", ".join(f"{name} {v:.1f} {unit}" for name, v in row.items()))
        if r >= warmup:
            for name, v in row.items():
                kept[name].append(v)
    return kept


def rate(fn: Callable[[], object], units: int) -> float:
    """`units` (images, steps, ...) per second of one call of fn."""
    t0 = time.perf_counter()
    fn()
    return units / (time.perf_counter() - t0)


def latency_ms(fn: Callable[[int], object], calls: int) -> dict:
    """Median and p99 in milliseconds of `calls` calls fn(0), fn(1), ..."""
    times = []
    for i in range(calls):
        t0 = time.perf_counter()
        fn(i)
        times.append(1000 * (time.perf_counter() - t0))
    times.sort()
    return {"median_ms": statistics.median(times), "p99_ms": times[min(len(times) - 1, int(0.99 * len(times)))]}


def median(values: Iterable[float]) -> float:
    return statistics.median(values)


def ratio_median(a: list[float], b: list[float]) -> float:
    """The median of the round-by-round ratios a/b: each ratio is taken within one round, so the
    machine's drift between rounds cancels."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))
