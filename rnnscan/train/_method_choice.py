"""Which method each block's RNN runs in a training run, and the jitted steps that run it.

A fixed ``model.method`` runs as configured (with one warning when its solves start to fall
back). ``model.method: auto`` puts a :class:`MethodSelector` behind the same two hooks: the
loop runs each step with :meth:`MethodChoice.train_step` and reports it to
:meth:`MethodChoice.after_step`, which feeds the selector, applies its decisions (another
assignment of the static flags, so other jitted steps) and compiles the next probe's train
step on a worker thread (:class:`BackgroundCompiler`). Each assignment and batch shape
compiles once; steps that compiled, or ran beside a compile, are not timed for decisions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rnnscan.nn import auto_layers, set_methods

from ._checkpoint import LoopState
from ._config import TrainConfig
from ._precompile import BackgroundCompiler, StepTimings, abstract
from ._selector import Decision, MethodSelector
from ._steps import Steps, TrainState, compiled_steps

__all__ = ["MethodChoice", "StepTiming"]


class StepTiming(NamedTuple):
    """How one training step ran: its wall time (with the wait for its results), whether
    it compiled its program, and whether a background compile shared the machine."""

    seconds: float
    includes_compile: bool
    during_background_compile: bool


class MethodChoice:
    """The methods of a run's blocks, the jitted steps that run them, and for
    ``method: auto`` the selector that changes them.

    Args:
        config: the run.
        model: the classifier (its ``Auto`` layers are the selector's layers).
        total_steps, steps_per_epoch: the run's length (when the first evaluation comes,
            and how much time a probe's compile has to pay for itself).
        emit: writes a record to ``metrics.jsonl``.
        say: prints a line above the progress bar.
    """

    def __init__(
        self,
        config: TrainConfig,
        model: nnx.Module,
        total_steps: int,
        steps_per_epoch: int,
        emit: Callable[[dict[str, Any]], None],
        say: Callable[[str], None],
    ):
        self.config = config
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.blocks = config.model.num_blocks
        self.emit, self.say = emit, say
        self.selector = _selector(config, len(auto_layers(model)))
        self.compiler = BackgroundCompiler()
        self._step_timings = StepTimings()
        self._compiled: set[tuple] = set()  # a new batch shape, or assignment, compiles
        self.graphdef = nnx.split(model, nnx.Param, ...)[0]
        steps = self._compiled_steps(self.graphdef)
        self.optimizer, self.schedule = steps.optimizer, steps.schedule
        self._train_step, self.eval_step = steps.train_step, steps.eval_step

    # -- reading -------------------------------------------------------------------------

    def names(self, settled: bool = False) -> list[str]:
        """The method each block's RNN runs now in training (``settled``: in evaluations)."""
        if self.selector is None:
            return [self.config.model.method] * self.blocks
        if not settled:
            return list(self.selector.methods)
        name = self.selector.parallel_name
        return [name if p else "sequential" for p in self.selector.settled]

    def state_dict(self) -> dict[str, Any] | None:
        """The selector's state for the checkpoint (``None`` for a fixed method)."""
        return None if self.selector is None else self.selector.state_dict()

    def summary(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Which method each block ran, for how many steps and how much time, and why it
        changed (the ``method`` records of ``metrics.jsonl``)."""
        final = self.names()
        steps: list[dict[str, int]] = [{} for _ in final]
        seconds: list[dict[str, float]] = [{} for _ in final]
        for r in records:
            if r.get("kind") == "train" and r.get("methods"):
                for block, name in enumerate(r["methods"]):
                    steps[block][name] = steps[block].get(name, 0) + 1
                    seconds[block][name] = seconds[block].get(name, 0.0) + r["step_time_s"]
        changes = [
            {k: r[k] for k in ("step", "layer", "method", "decision", "reason")}
            for r in records
            if r.get("kind") == "method" and r.get("decision") in ("kept", "fallback")
        ]
        return {"methods": final, "method_steps": steps, "method_changes": changes}

    # -- the hooks -----------------------------------------------------------------------

    def start(self, state: TrainState, loop: LoopState) -> None:
        """Set the model's flags to the selector's start, or to where a resumed run's
        selector was (``loop.selector``)."""
        if self.selector is None:
            return
        if loop.selector is not None:
            self.selector.load_state_dict(loop.selector)
        self._use_assignment(state)

    def train_step(
        self, state: TrainState, args: tuple, batch_shape: tuple[int, ...]
    ) -> tuple[TrainState, dict[str, Any], StepTiming]:
        """One training step of the current assignment, timed, its summaries on the host:
        by the executable compiled ahead for this assignment and batch shape when there is
        one, else by the jitted step."""
        variant = (batch_shape, tuple(self.names()))
        shared = self.compiler.busy()  # this step shares the machine with a compile
        started = time.perf_counter()
        state, out, ahead = self._run(variant, state, args)
        out = jax.device_get(out)
        seconds = time.perf_counter() - started
        first_step = variant not in self._compiled and not ahead
        self._compiled.add(variant)
        self._step_timings.add(seconds, compiled=first_step, shared=shared)
        return state, out, StepTiming(seconds, first_step, shared)

    def after_step(
        self,
        state: TrainState,
        args: tuple,
        record: dict[str, Any],
        out: dict[str, Any],
        loop: LoopState,
        first_eval_pending: bool,
    ) -> None:
        """Feed the step (its ``train`` ``record`` and summaries ``out``) to the selector
        and apply its decisions; then start compiling the next probe's train step, unless
        the first evaluation is still to come soon (``first_eval_pending``: it compiles
        too, and side by side both take far longer). For a fixed parallel method, warn
        once when its solves start falling back."""
        batch_shape = args[0].shape
        if self.selector is None:
            self._warn_fallbacks(record, loop)
            return
        self._observe(state, record, out, batch_shape)
        if not (first_eval_pending and self._first_eval_soon()):
            self._compile_upcoming(state, args, batch_shape, loop)

    def close(self) -> None:
        self.compiler.close()

    # -- fixed methods -------------------------------------------------------------------

    def _warn_fallbacks(self, record: dict[str, Any], loop: LoopState) -> None:
        if (
            not loop.warned_parallel
            and self.config.model.method != "sequential"
            and (record["fell_back"] or record["not_converged"])
        ):
            loop.warned_parallel = True
            message = (
                f"at step {record['step']} the {self.config.model.method} solves of "
                f"{record['not_converged']} sequence-blocks did not converge "
                f"({record['fell_back']} fell back to lax.scan, which then runs as well): "
                "the parallel method no longer pays for itself. model.method: auto "
                "switches such blocks to sequential by measurement."
            )
            self.emit({"kind": "warning", "step": record["step"], "message": message})
            self.say(f"  warning: {message}")

    # -- method: auto --------------------------------------------------------------------

    def _observe(self, state, record, out, batch_shape) -> None:
        # Steps of different lengths (buckets) are compared per time step.
        length = batch_shape[1] if len(batch_shape) > 1 else 1
        decisions = self.selector.observe(
            record["step"],
            record["step_time_s"] / length,
            record["iterations_per_block"],
            np.asarray(out["fell_back_per_block"]) / float(out["count"]),
            includes_compile=record["includes_compile"]
            or record["during_background_compile"]
            or self._upcoming_variant(batch_shape, waiting_only=True) is not None,
        )
        self._log_decisions(decisions)
        if decisions:  # a probe that is kept changes no flag but settles the assignment
            self._use_assignment(state)

    def _log_decisions(self, decisions: list[Decision]) -> None:
        for decision in decisions:
            name = self.selector.parallel_name if decision.parallel else "sequential"
            self.emit(
                {**decision.to_dict(), "kind": "method", "decision": decision.kind, "method": name}
            )
            if decision.kind in ("kept", "fallback", "deferred"):
                verb = "stays on" if decision.kind == "deferred" else "now runs"
                self.say(
                    f"  step {decision.step}: block {decision.layer} {verb} {name}: "
                    f"{decision.reason}"
                )

    def _run(self, variant, state, args):
        """``(state, summaries, whether it ran ahead-compiled)``."""
        executable = self.compiler.get(variant)
        if executable is not None:
            try:
                return (*executable(state, *args), True)
            except (TypeError, ValueError):  # arguments it was not compiled for
                self.compiler.discard(variant)
        return (*self._train_step(state, *args), False)

    def _first_eval_soon(self) -> bool:
        """Whether the first evaluation comes within a re-check interval: compiling its
        program beside a background compilation took 8x longer (9.7 s against 1.2 s, LSTM
        16 x 2 on 2 CPU cores), so the background compilation waits for it."""
        every = self.config.train.eval_every or self.steps_per_epoch
        return min(every, self.total_steps) <= self.selector.recheck_every

    def _compile_upcoming(self, state, args, batch_shape, loop: LoopState) -> None:
        """Start compiling the train step of the selector's next probe on the worker thread,
        unless it is compiled already or the run is too short for it to pay (then the
        selector defers the probe, once a plain step has been timed to judge by)."""
        variant = self._upcoming_variant(batch_shape)
        if variant is not None and not self.compiler.submitted(variant):
            estimate = self._step_timings.estimate()
            if estimate is None:
                return
            step_seconds, compile_seconds = estimate
            decisions = self.selector.defer_unaffordable(
                loop.step,
                remaining_seconds=step_seconds * (self.total_steps - loop.step),
                compile_seconds=compile_seconds,
            )
            if decisions:
                self._log_decisions(decisions)
                return
            _, steps = self._steps_for(state, self.selector.upcoming)
            self.compiler.submit(variant, steps.train_step, *abstract((state, *args)))

    def _upcoming_variant(self, batch_shape, waiting_only=False):
        """``(batch shape, methods)`` of the selector's next probe when its train step is
        not compiled yet (``waiting_only``: nor has its background compilation finished,
        successfully or not); else ``None``. While the probe waits for its program, steps
        are not timed for decisions, so that the probe never compiles in the loop."""
        upcoming = self.selector.upcoming
        if upcoming is None:
            return None
        name = self.selector.parallel_name
        variant = (batch_shape, tuple(name if p else "sequential" for p in upcoming))
        if variant in self._compiled or (waiting_only and self.compiler.finished(variant)):
            return None
        return variant

    def _use_assignment(self, state: TrainState) -> None:
        """Switch the jitted steps to the selector's assignment of methods: another graph
        definition (the flags are static), the same parameter and state pytrees; each
        assignment compiles the first time it runs and is cached after. Evaluations use the
        settled assignment, not one that is only being timed (no compilation for it)."""
        self.graphdef, steps = self._steps_for(state, self.selector.parallel)
        self._train_step = steps.train_step
        self.eval_step = self._steps_for(state, self.selector.settled)[1].eval_step

    def _steps_for(self, state: TrainState, parallel: tuple[bool, ...]):
        model = nnx.merge(self.graphdef, state.params, state.rest)
        set_methods(model, parallel)
        graphdef = nnx.split(model, nnx.Param, ...)[0]
        return graphdef, self._compiled_steps(graphdef)

    def _compiled_steps(self, graphdef) -> Steps:
        train = self.config.train
        return compiled_steps(
            graphdef,
            self.config.optim,
            self.total_steps,
            jnp.dtype(self.config.model.dtype),
            train.lyapunov,
            train.warm_start_eval,
        )


def _selector(config: TrainConfig, num_auto: int) -> MethodSelector | None:
    """The method selector of ``model.method: auto`` (``None`` for a fixed method)."""
    model = config.model
    if model.method != "auto":
        return None
    options = {k: v for k, v in model.auto.items() if k != "parallel"}
    # Start sequential: its program compiles fast, and the parallel one, whose compile can
    # outlast a short run, then compiles on the worker thread while training goes on.
    options.setdefault("start", "sequential")
    return MethodSelector(num_auto, parallel_name=model.auto.get("parallel", "newton"), **options)
