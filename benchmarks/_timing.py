"""Honest timing: ahead-of-time compilation timed on its own, warm-up, then repeated calls
that each wait for the result (``jax.block_until_ready``)."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax


@dataclasses.dataclass
class Timing:
    """Wall-clock seconds of one case.

    Attributes:
        lower_s: tracing and lowering to StableHLO (``jax.jit(fn).lower(*args)``).
        compile_s: XLA compilation (``lowered.compile()``).
        warmup_s: the untimed-for-statistics calls before the repeats (the first includes
            any one-off run-time cost, e.g. allocation).
        times_s: the timed calls, in order.
    """

    lower_s: float
    compile_s: float
    warmup_s: list[float] = dataclasses.field(default_factory=list)
    times_s: list[float] = dataclasses.field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The record's ``timing`` field: all times plus median, min, quartiles and IQR."""
        times = sorted(self.times_s)
        if len(times) >= 2:
            q25, _, q75 = statistics.quantiles(times, n=4, method="inclusive")
        else:
            q25 = q75 = times[0] if times else None
        return {
            "lower_s": self.lower_s,
            "compile_s": self.compile_s,
            "warmup_s": self.warmup_s,
            "times_s": self.times_s,
            "repeats": len(times),
            "median_s": statistics.median(times) if times else None,
            "min_s": times[0] if times else None,
            "q25_s": q25,
            "q75_s": q75,
            "iqr_s": None if q25 is None else q75 - q25,
        }


def compile_ahead_of_time(fn: Callable, *args) -> tuple[Any, float, float]:
    """``(compiled, lower_s, compile_s)`` for ``jax.jit(fn)`` at ``args``."""
    start = time.perf_counter()
    lowered = jax.jit(fn).lower(*args)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    compiled_at = time.perf_counter()
    return compiled, lowered_at - start, compiled_at - lowered_at


def timed_call(compiled: Callable, *args) -> tuple[Any, float]:
    """``(outputs, seconds)`` of one call, waiting until the outputs are computed."""
    start = time.perf_counter()
    outputs = compiled(*args)
    jax.block_until_ready(outputs)
    return outputs, time.perf_counter() - start


def number_of_repeats(
    seconds_per_call: float, repeats: int, min_repeats: int, budget_s: float
) -> int:
    """``repeats``, reduced (not below ``min_repeats``) so that the repeats fit in ``budget_s``."""
    if seconds_per_call <= 0:
        return repeats
    affordable = int(budget_s // seconds_per_call)
    return max(min_repeats, min(repeats, affordable))


def measure(
    compiled: Callable,
    args: tuple,
    *,
    timing: Timing,
    warmup: int,
    repeats: int,
    min_repeats: int,
    budget_s: float,
    inspect_first: Callable[[Any], None],
) -> Timing:
    """Warm up, then time the repeats. ``inspect_first`` receives the first call's outputs
    (to check them and read the solver statistics) before they are released."""
    outputs, seconds = timed_call(compiled, *args)
    timing.warmup_s.append(seconds)
    inspect_first(outputs)
    del outputs
    for _ in range(warmup - 1):
        _, seconds = timed_call(compiled, *args)
        timing.warmup_s.append(seconds)
    for _ in range(number_of_repeats(seconds, repeats, min_repeats, budget_s)):
        _, seconds = timed_call(compiled, *args)
        timing.times_s.append(seconds)
    return timing


def interleaved_times(programs: dict[str, Callable], args, repeats: int) -> dict[str, list[float]]:
    """All wall times of each program over ``repeats`` rounds, the programs called in turn in
    each round, so that a drift in the machine's load (large on a shared 2-core CPU) hits
    every program alike. Warm the programs up first (the first call compiles)."""
    times: dict[str, list[float]] = {name: [] for name in programs}
    for _ in range(repeats):
        for name, fn in programs.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
    return times
