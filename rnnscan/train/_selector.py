r"""Choosing, per layer and while training runs, between the parallel solver and ``lax.scan``.

Newton's iteration count is not a constant of a model: it grows as training moves the weights,
and a layer that was faster in parallel at step 1 can be many times slower by step 300 (or fall
back to the sequential scan on every batch, paying for both). :class:`MethodSelector` keeps
each ``method="auto"`` layer on whichever is faster *now*, from measurements only:

1. **Measure** the current assignment: the median time of ``window`` training steps.
2. **Probe**: flip every layer under review at once (parallel <-> sequential), time
   ``window`` steps (fewer when every step is ``decisive`` times slower or faster), keep the
   flip if the median is at least ``margin`` faster, otherwise flip back. Layers whose
   parallel iterations are not ``alike`` (within a factor 1.5) are then probed one by one
   when the verdict was close (within a factor ``split_within`` = 1.25), since they need
   not gain or lose together; every such probe costs a compilation.
3. **Hold** the assignment, and start a new round (1-2) after ``recheck_every`` steps (the
   interval doubles, up to ``max_recheck_every``, after a round that changed nothing) or
   as soon as the statistics drift: the mean iterations of a parallel layer rise by more
   than ``drift`` (relative) over what they were when it was last confirmed.
4. A parallel layer whose solves **fall back** to the sequential scan in ``fallback_steps``
   of the last ``window`` steps is switched to sequential at once: a fallback runs both.
5. A probe that turns layers **parallel** has to compile a program that contains the
   current one and the parallel solves besides. When even the current program's compile
   time is more than ``probe_budget`` of the time the run has left, the probe cannot pay for
   itself and the round is deferred (:meth:`MethodSelector.defer_unaffordable`): a short
   run stays on what it started with instead of sharing the machine with a compile whose
   result it would barely use.

Every probe runs a real training step (the methods agree to the solver tolerance), so the
search costs the difference in step time while it runs, plus one compilation per
assignment the first time it is visited (two for layers that behave alike: all parallel,
all sequential; later rounds revisit compiled ones). The selector is a plain-Python state
machine: its decisions are a deterministic function of the measurements fed to
:meth:`MethodSelector.observe`, and its state round-trips through :meth:`state_dict` (a JSON
dict) so that a resumed run continues the same schedule.

Per-layer step times are not observable separately, so a layer's cost is the difference of
two whole-step medians; the search assumes that layers' costs add up (true for stacked
layers that run one after another) and that layers which iterate alike gain or lose alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["Decision", "MethodSelector"]


@dataclasses.dataclass(frozen=True)
class Decision:
    """One step of the selector's search for a layer.

    Attributes:
        step: the training step after which it was taken.
        layer: the layer's index.
        kind: ``"probe"`` (the layer is flipped to be timed), ``"kept"`` (the probe was
            faster: the layer stays flipped), ``"reverted"`` (it was not: flipped back),
            ``"fallback"`` (a parallel layer that kept falling back, switched to sequential)
            or ``"deferred"`` (the probe was not run: its compile could not pay for itself).
            ``"kept"`` and ``"fallback"`` change the layer's method for good.
        parallel: the method the layer runs from the next step: ``True`` for the parallel one.
        changed: whether that differs from the method of this step (apply it with
            :func:`rnnscan.nn.set_methods`).
        reason: why, in words, with the numbers.
    """

    step: int
    layer: int
    kind: str
    parallel: bool
    changed: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``metrics.jsonl`` records)."""
        return dataclasses.asdict(self)


def _alike(iterations: Sequence[float], ratio: float) -> bool:
    """Whether layers iterate alike: the most by at most ``ratio`` times the fewest."""
    low, high = min(iterations), max(iterations)
    return high <= ratio * max(low, 1.0)


def _median(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values, dtype=float)))


class MethodSelector:
    """Per-layer choice between a parallel method and ``lax.scan``, from measured step times.

    Feed it every training step with :meth:`observe`; read the assignment from
    :attr:`parallel` and apply it with :func:`rnnscan.nn.set_methods` when :meth:`observe` returns
    decisions that changed something. See the module docstring for the algorithm. A
    training loop with it::

        selector = MethodSelector(len(auto_layers(model)))
        compiled = set()  # each assignment compiles the first time it runs
        for step, batch in enumerate(batches, 1):
            start = time.perf_counter()
            stats = train_step(model, batch)  # blocks until done, returns SolverStats per layer
            seconds = time.perf_counter() - start
            ran = selector.parallel
            decisions = selector.observe(
                step,
                seconds,
                iterations=[s.iterations.mean() for s in stats],
                fell_back=[s.fell_back.mean() for s in stats],
                includes_compile=ran not in compiled,
            )
            compiled.add(ran)
            if any(d.changed for d in decisions):
                set_methods(model, selector.parallel)

    Args:
        num_layers: the number of ``Auto`` layers.
        parallel_name: what to call the parallel method in :attr:`methods` and reasons.
        start: the assignment before any measurement: ``"parallel"``, ``"sequential"`` or a
            sequence of flags, one per layer.
        window: training steps timed per measurement (their median is compared).
        margin: a probe is kept only if it is faster by more than this fraction.
        recheck_every: steps between rounds of probes while nothing drifts.
        max_recheck_every: the interval doubles after a round that changed nothing, up to this.
        drift: relative rise of a parallel layer's mean iterations that starts a round early.
        fallback_steps: steps (of the last ``window``) with fallbacks that switch a parallel
            layer to sequential at once.
        decisive: a probe ends early once all its steps are this many times slower (or
            faster) than the current assignment; layers probed together are then not
            probed again one by one.
        alike: layers probed together whose parallel iterations differ by more than this
            ratio are probed again one by one, if the verdict was close: the group's step
            time within a factor ``split_within`` of the current one.
        probe_budget: the largest fraction of the run's remaining time that compiling a probe
            toward parallel may cost (see :meth:`defer_unaffordable`).
    """

    def __init__(
        self,
        num_layers: int,
        *,
        parallel_name: str = "parallel",
        start: str | Sequence[bool] = "parallel",
        window: int = 3,
        margin: float = 0.05,
        recheck_every: int = 200,
        max_recheck_every: int = 1600,
        drift: float = 0.25,
        fallback_steps: int = 2,
        decisive: float = 2.0,
        alike: float = 1.5,
        split_within: float = 1.25,
        probe_budget: float = 0.1,
    ):
        if num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {num_layers}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if not 0 <= margin < 1:
            raise ValueError(f"margin must be in [0, 1), got {margin}")
        if recheck_every < 1 or max_recheck_every < recheck_every:
            raise ValueError(
                f"need 1 <= recheck_every <= max_recheck_every, got {recheck_every} and "
                f"{max_recheck_every}"
            )
        if drift <= 0:
            raise ValueError(f"drift must be > 0, got {drift}")
        if decisive <= 1 or alike < 1 or split_within < 1:
            raise ValueError(
                f"need decisive > 1, alike >= 1 and split_within >= 1, got {decisive}, "
                f"{alike} and {split_within}"
            )
        if probe_budget <= 0:
            raise ValueError(f"probe_budget must be > 0, got {probe_budget}")
        if not 1 <= fallback_steps <= window:
            raise ValueError(
                f"fallback_steps must be in [1, window={window}], got {fallback_steps}"
            )
        if isinstance(start, str):
            if start not in ("parallel", "sequential"):
                raise ValueError(f"start must be 'parallel', 'sequential' or flags, got {start!r}")
            flags = [start == "parallel"] * num_layers
        else:
            flags = [bool(f) for f in start]
            if len(flags) != num_layers:
                raise ValueError(f"start has {len(flags)} flags for {num_layers} layers")
        self.num_layers = num_layers
        self.parallel_name = parallel_name
        self.window = window
        self.margin = margin
        self.recheck_every = recheck_every
        self.max_recheck_every = max_recheck_every
        self.drift = drift
        self.fallback_steps = fallback_steps
        self.decisive = decisive
        self.alike = alike
        self.split_within = split_within
        self.probe_budget = probe_budget
        # The state (all of it goes through state_dict).
        self._parallel = flags
        self._phase = "measure"  # "measure" | "probe" | "hold"
        # Probes still to run this round, each a group of layers flipped together.
        self._queue: list[list[int]] = [list(range(num_layers))] if num_layers else []
        self._probing: list[int] = []
        self._times: list[float] = []  # step times of the current measurement
        self._iterations: list[list[float]] = []  # per step, per layer, of the measurement
        self._recent_fallbacks: list[list[bool]] = []  # per step, per layer (last `window`)
        self._recent_iterations: list[list[float]] = []
        self._baseline_time: float | None = None
        self._baseline_iterations: list[float] = [0.0] * num_layers
        self._confirmed_iterations: list[float | None] = [None] * num_layers
        self._interval = recheck_every
        self._held = 0
        self._round_changed = False
        if num_layers == 0:
            self._phase = "hold"

    # -- reading -------------------------------------------------------------------------

    @property
    def parallel(self) -> tuple[bool, ...]:
        """The current assignment: ``True`` where the layer runs the parallel method."""
        return tuple(self._parallel)

    @property
    def settled(self) -> tuple[bool, ...]:
        """The assignment without the probe in progress (what to evaluate with: no
        compilation for an assignment that is only being timed)."""
        return tuple(p != (layer in self._probing) for layer, p in enumerate(self._parallel))

    @property
    def upcoming(self) -> tuple[bool, ...] | None:
        """The assignment the next probe will run, while the current one is being measured
        (``None`` otherwise): what a training loop can compile ahead of time."""
        if self._phase != "measure" or not self._queue:
            return None
        flags = list(self._parallel)
        for layer in self._queue[0]:
            flags[layer] = not flags[layer]
        return tuple(flags)

    @property
    def methods(self) -> tuple[str, ...]:
        """The current assignment by name (``parallel_name`` or ``"sequential"``)."""
        return tuple(self.parallel_name if p else "sequential" for p in self._parallel)

    @property
    def phase(self) -> str:
        """``"measure"``, ``"probe"`` (a layer is flipped and being timed) or ``"hold"``."""
        return self._phase

    def _name(self, parallel: bool) -> str:
        return self.parallel_name if parallel else "sequential"

    # -- the state machine ---------------------------------------------------------------

    def observe(
        self,
        step: int,
        step_time: float,
        iterations: Sequence[float],
        fell_back: Sequence[float],
        *,
        includes_compile: bool = False,
    ) -> list[Decision]:
        """Record one training step and return the decisions it led to (often none).

        Args:
            step: the step's number.
            step_time: its wall time in seconds, including the wait for its results.
            iterations: per layer, the mean parallel iterations of the step's sequences
                (ignored for sequential layers).
            fell_back: per layer, the fraction (or count) of sequences whose parallel solve
                fell back to the sequential scan.
            includes_compile: the step compiled something; its time is not used.
        """
        if len(iterations) != self.num_layers or len(fell_back) != self.num_layers:
            raise ValueError(
                f"observe: expected {self.num_layers} per-layer values, got "
                f"{len(iterations)} iterations and {len(fell_back)} fell_back"
            )
        iterations = [float(i) for i in iterations]
        fell = [bool(p and f > 0) for p, f in zip(self._parallel, fell_back, strict=True)]
        self._recent_fallbacks = (self._recent_fallbacks + [fell])[-self.window :]
        self._recent_iterations = (self._recent_iterations + [iterations])[-self.window :]

        decisions = self._fallback_rule(step)
        if decisions:
            return decisions
        if includes_compile:
            return []
        if self._phase == "hold":
            return self._hold(step)
        self._times.append(float(step_time))
        self._iterations.append(iterations)
        if len(self._times) < self.window and not self._decisive():
            return []
        decisive = self._decisive()
        measured = _median(self._times)
        mean_iterations = np.mean(self._iterations, axis=0).tolist()
        self._times, self._iterations = [], []
        if self._phase == "measure":
            self._baseline_time = measured
            self._baseline_iterations = mean_iterations
            return self._next_probe(step)
        return self._finish_probe(step, measured, mean_iterations, decisive)

    def defer_unaffordable(
        self, step: int, *, remaining_seconds: float, compile_seconds: float
    ) -> list[Decision]:
        """Defer this round's probes when the next one turns a layer parallel and its
        program's compile cannot pay: ``compile_seconds`` (a lower bound, e.g. the compile
        time of the current program, which the probe's program contains) is more than
        ``probe_budget`` times the ``remaining_seconds`` of the run. The round ends as one
        that changed nothing (the re-check interval doubles); returns a ``"deferred"``
        decision per layer that was to be probed, or nothing."""
        upcoming = self.upcoming
        if upcoming is None or not any(u and not p for u, p in zip(upcoming, self._parallel)):
            return []
        if compile_seconds <= self.probe_budget * remaining_seconds:
            return []
        layers = sorted({layer for group in self._queue for layer in group})
        self._queue = []
        self._times, self._iterations = [], []
        self._end_round(step)
        return [
            Decision(
                step,
                layer,
                "deferred",
                self._parallel[layer],
                False,
                f"not timing {self._name(not self._parallel[layer])}: compiling it takes more "
                f"than {compile_seconds:.3g} s, over {self.probe_budget:.0%} of the "
                f"{remaining_seconds:.3g} s the run has left",
            )
            for layer in layers
        ]

    def _decisive(self) -> bool:
        """A probe whose steps are all more than ``decisive`` times faster or slower than the
        baseline ends before its window is full."""
        if self._phase != "probe" or not self._baseline_time:
            return False
        ratios = [t / self._baseline_time for t in self._times]
        return all(r > self.decisive for r in ratios) or all(r * self.decisive < 1 for r in ratios)

    def _fallback_rule(self, step: int) -> list[Decision]:
        """Switch parallel layers that keep falling back, and restart the round's timing
        (the assignment it was measuring has changed)."""
        switched = [
            layer
            for layer in range(self.num_layers)
            if self._parallel[layer]
            and sum(steps[layer] for steps in self._recent_fallbacks) >= self.fallback_steps
        ]
        if not switched:
            return []
        # Layers that just fell back are probed again only at the next periodic round.
        queue = [[layer for layer in group if layer not in switched] for group in self._queue]
        if self._phase == "hold":
            queue = []
        probing = self._probing if self._phase == "probe" else []
        others = [layer for layer in probing if layer not in switched]
        if others:
            # Abort the probe (its timing includes the fallbacks) and redo it after.
            for layer in others:
                self._parallel[layer] = not self._parallel[layer]
            queue = [others, *queue]
        decisions = []
        for layer in switched:
            count = sum(steps[layer] for steps in self._recent_fallbacks)
            self._parallel[layer] = False
            self._confirmed_iterations[layer] = None
            for steps in self._recent_fallbacks:
                steps[layer] = False
            decisions.append(
                Decision(
                    step,
                    layer,
                    "fallback",
                    False,
                    True,
                    f"{self.parallel_name} fell back to the sequential scan in {count} of the "
                    f"last {len(self._recent_fallbacks)} steps (a fallback runs both)"
                    + ("; probe rejected" if layer in probing else ""),
                )
            )
        # A layer that fell back in its own probe is back where it was: no change.
        if any(layer not in probing for layer in switched):
            self._round_changed = True
        self._phase = "measure"
        self._queue = [group for group in queue if group]
        self._probing = []
        self._times, self._iterations = [], []
        return decisions

    def _start_round(self, layers: Sequence[int]) -> None:
        """Measure the current assignment, then probe ``layers``: all of them flipped at once
        first (one probe, one compilation), one by one only if they turn out unlike."""
        self._phase = "measure"
        layers = list(dict.fromkeys(layers))
        self._queue = [layers] if layers else []
        self._probing = []
        self._times, self._iterations = [], []

    def _next_probe(self, step: int) -> list[Decision]:
        if not self._queue:
            return self._end_round(step)
        group = self._queue.pop(0)
        self._probing = group
        self._phase = "probe"
        together = f" (with layers {group}, together)" if len(group) > 1 else ""
        decisions = []
        for layer in group:
            self._parallel[layer] = not self._parallel[layer]
            decisions.append(
                Decision(
                    step,
                    layer,
                    "probe",
                    self._parallel[layer],
                    True,
                    f"timing {self._name(self._parallel[layer])}{together} (current "
                    f"assignment: {self._baseline_time:.4g} s/step)",
                )
            )
        return decisions

    def _finish_probe(
        self, step: int, measured: float, mean_iterations: Sequence[float], decisive: bool
    ) -> list[Decision]:
        group, baseline = self._probing, self._baseline_time
        tried = {layer: self._parallel[layer] for layer in group}
        # Each layer's iterations when it ran in parallel: in the probe or in the baseline.
        parallel_iterations = {
            layer: (mean_iterations if tried[layer] else self._baseline_iterations)[layer]
            for layer in group
        }
        kept = measured < (1 - self.margin) * baseline
        decisions = []
        for layer in group:
            names = (self._name(tried[layer]), self._name(not tried[layer]))
            numbers = f"{names[0]} {measured:.4g} s/step vs {names[1]} {baseline:.4g} s/step" + (
                f" (layers {group} together)" if len(group) > 1 else ""
            )
            if kept:
                decisions.append(Decision(step, layer, "kept", tried[layer], False, numbers))
            else:
                self._parallel[layer] = not tried[layer]
                reason = "within the margin" if measured < baseline else "slower"
                decisions.append(
                    Decision(
                        step, layer, "reverted", not tried[layer], True, f"{reason}: {numbers}"
                    )
                )
            # Drift is judged against the iterations of this layer's last parallel timing.
            self._confirmed_iterations[layer] = (
                parallel_iterations[layer] if self._parallel[layer] else None
            )
        if kept:
            self._baseline_time = measured
            self._baseline_iterations = list(mean_iterations)
            self._round_changed = True
        unlike = not _alike(list(parallel_iterations.values()), self.alike)
        close = 1 / self.split_within < measured / baseline < self.split_within
        if len(group) > 1 and unlike and close and not decisive:
            # Layers that iterate very differently may not gain or lose together, if the
            # verdict was close enough for some of them to go the other way; each split
            # probe costs a compilation, so a clear verdict is not split.
            self._queue = [[layer] for layer in group] + self._queue
        self._probing = []
        return [*decisions, *self._next_probe(step)]

    def _end_round(self, step: int) -> list[Decision]:
        self._phase = "hold"
        self._held = 0
        if self._round_changed:
            self._interval = self.recheck_every
        else:
            self._interval = min(2 * self._interval, self.max_recheck_every)
        self._round_changed = False
        return []

    def _hold(self, step: int) -> list[Decision]:
        self._held += 1
        if len(self._recent_iterations) == self.window:
            recent = np.mean(self._recent_iterations, axis=0)
            drifted = [
                layer
                for layer, confirmed in enumerate(self._confirmed_iterations)
                if self._parallel[layer]
                and confirmed is not None
                and recent[layer] > (1 + self.drift) * confirmed
                and recent[layer] > confirmed + 1
            ]
            if drifted:
                self._interval = self.recheck_every
                self._start_round(drifted)
                return []
        if self._held >= self._interval:
            self._start_round(range(self.num_layers))
        return []

    # -- persistence ---------------------------------------------------------------------

    _STATE = (
        "_parallel",
        "_phase",
        "_queue",
        "_probing",
        "_times",
        "_iterations",
        "_recent_fallbacks",
        "_recent_iterations",
        "_baseline_time",
        "_baseline_iterations",
        "_confirmed_iterations",
        "_interval",
        "_held",
        "_round_changed",
    )

    def state_dict(self) -> dict[str, Any]:
        """The selector's whole state as a JSON-ready dict (see :meth:`load_state_dict`)."""
        return {name.lstrip("_"): _plain(getattr(self, name)) for name in self._STATE}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` of a selector with the same options."""
        if len(state["parallel"]) != self.num_layers:
            raise ValueError(
                f"a selector state for {len(state['parallel'])} layers cannot be loaded into "
                f"one for {self.num_layers}"
            )
        for name in self._STATE:
            setattr(self, name, _plain(state[name.lstrip("_")]))


def _plain(value: Any) -> Any:
    """Deep copy into lists / floats / ints / bools (what JSON holds)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
