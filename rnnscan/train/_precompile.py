"""Compiling the next probe's train step on a worker thread (``method: auto``).

A probe of another assignment of methods needs its own train step, and compiling the
parallel one can take longer than a short run's whole training (LSTM 16 x 2, T = 900, on a
2-core CPU: 12.7 s against 0.09 s per sequential step). The selector announces the
assignment it will probe next (:attr:`rnnscan.train.MethodSelector.upcoming`); this compiles
that train step ahead of time (``jit(...).lower(...).compile()``, which XLA runs outside
the GIL) while training goes on with the current assignment, and the loop calls the
compiled executable once the probe starts. The steps that ran during a compilation shared
the machine with it, so their times are not used for decisions.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import jax
import numpy as np


def abstract(tree: Any) -> Any:
    """Shapes, dtypes and shardings of the arrays of ``tree`` (what lowering needs; taken
    in the calling thread, so later steps are free to replace the arrays)."""

    def spec(leaf):
        if isinstance(leaf, jax.Array):
            return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
        return leaf

    return jax.tree_util.tree_map(spec, tree)


class BackgroundCompiler:
    """One worker thread compiling jitted functions for given abstract arguments."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._jobs: dict[Hashable, Future] = {}

    def submit(self, key: Hashable, jitted: Callable, *abstract_args: Any) -> None:
        """Compile ``jitted`` for ``abstract_args`` under ``key`` (once per key)."""
        if key in self._jobs:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rnnscan-compile")
        self._jobs[key] = self._pool.submit(lambda: jitted.lower(*abstract_args).compile())

    def busy(self) -> bool:
        """Whether a compilation is running or waiting."""
        return any(not job.done() for job in self._jobs.values())

    def submitted(self, key: Hashable) -> bool:
        return key in self._jobs

    def finished(self, key: Hashable) -> bool:
        """Whether the compilation of ``key`` has ended (successfully or not)."""
        job = self._jobs.get(key)
        return job is not None and job.done()

    def get(self, key: Hashable) -> Callable | None:
        """The compiled executable of ``key`` when it is ready, else ``None`` (also when its
        compilation failed: the caller's jitted function will then compile, and raise, in
        the training thread)."""
        job = self._jobs.get(key)
        if job is None or not job.done() or job.exception() is not None:
            return None
        return job.result()

    def discard(self, key: Hashable) -> None:
        """Forget ``key`` (its executable did not accept the arguments)."""
        self._jobs.pop(key, None)

    def close(self) -> None:
        """Cancel what has not started; a compilation in progress runs out in its thread."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


class StepTimings:
    """What the loop knows of its own speed, to judge whether a probe's compile can pay:
    the median of the last ``keep`` plain steps (no compile, no background compile beside
    them), and the compile time of the cheapest program compiled in the loop so far (its
    first step's time less that median)."""

    def __init__(self, keep: int = 20) -> None:
        self.keep = keep
        self._plain: list[float] = []
        self._first: list[float] = []

    def add(self, seconds: float, *, compiled: bool, shared: bool) -> None:
        """One step's wall time; ``compiled``: it compiled its program, ``shared``: a
        background compile ran beside it."""
        if compiled:
            self._first.append(seconds)
        elif not shared:
            self._plain = [*self._plain, seconds][-self.keep :]

    def estimate(self) -> tuple[float, float] | None:
        """``(seconds per step, seconds of the cheapest compile)``, or ``None`` before a
        compiled step and a plain one have been timed."""
        if not self._first or not self._plain:
            return None
        step = float(np.median(self._plain))
        return step, max(min(self._first) - step, 0.0)
