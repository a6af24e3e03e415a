"""Timing loops shared by the benchmarks (run as scripts, so ``from timing import ...`` finds this file)."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Tuple


def interleaved(fo: Callable[[], object], fr: Callable[[], object], reps: int) -> Tuple[float, float]:
    """Median wall seconds of ours (fo) and the reference (fr), after one warm-up call each.

    The two are timed alternately, so a change of machine load hits both alike.
    """
    fo(), fr()  # warm-up
    to, tr = [], []
    for _ in range(reps):
        t = time.perf_counter()
        fo()
        to.append(time.perf_counter() - t)
        t = time.perf_counter()
        fr()
        tr.append(time.perf_counter() - t)
    return statistics.median(to), statistics.median(tr)


def best_of(fn: Callable[[], object], repeats: int, clock: Callable[[], float] = time.perf_counter,
            warmup: bool = False) -> float:
    """Smallest time of ``repeats`` calls (``clock``: wall time, or ``time.process_time`` for CPU time)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        t = clock()
        fn()
        times.append(clock() - t)
    return min(times)


def median_of(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
