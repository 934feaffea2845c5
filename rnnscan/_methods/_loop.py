r"""The one loop that drives every iterative method, and what happens when it fails.

Reference loop::

    c = problem.first_guess(guess)
    state, nonfinite = method.init(problem, c)
    if method.single_step: one step, no loop around it (the same result codes)
    progress = give-up rules' memory, from method.initial_measure(state) (damped methods)
    for k in range(method.max_steps):
        if nonfinite: break
        state, report = method.step(problem, state, k)
        verdict = give-up rules (rnnscan._stopping) on report.measure
        if report.converged: result = successful; break
        if report.nonfinite: result = nonfinite; break
        if method.give_up and verdict: result = verdict; break
    else:
        result = max_steps_reached
    if result != successful and method.input_nonfinite(problem, state): result = nonfinite
    c = method.carries(problem, state)
    if result != successful and on_failure == "fallback": c = problem.sequential()
"""

from __future__ import annotations

from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from .._fallback import lazy_cond
from .._solution import RESULTS
from .._stopping import carry_scale, observe, start
from ._base import Method


class _Loop(NamedTuple):
    k: Any
    state: Any
    progress: Any
    residual: Any
    result: Any
    done: Any


def iterate(method: Method, problem, guess):
    """Iterate ``method`` on ``problem`` from ``guess`` (or the problem's first guess).
    Returns ``(carries, iterations, residual, result)``."""
    c = problem.first_guess(guess)
    dtype = c.dtype
    scale = carry_scale(problem.c0, c, problem.timeline)
    state, nonfinite = method.init(problem, c)
    if method.single_step:
        return _one_step(method, problem, state, nonfinite)

    def cond(loop):
        return (loop.k < method.max_steps) & ~loop.done

    def body(loop):
        state, report = method.step(problem, loop.state, loop.k)
        progress = loop.progress
        if report.restart is not None:
            fresh = start(dtype)
            progress = progress._replace(
                best=jnp.where(report.restart, fresh.best, progress.best),
                since_best=jnp.where(report.restart, fresh.since_best, progress.since_best),
            )
        progress, verdict = observe(
            progress,
            report.measure,
            report.finite,
            scale,
            method.progress_factor,
            prefix=report.prefix,
            unconverged=report.unconverged,
            # Unless the method says its prefix may grow late (the damped filter), growth
            # must be fast enough to finish within half the iterations left.
            iterations_left=(
                method.max_steps - loop.k - 1 if getattr(method, "prefix_budget", True) else None
            ),
        )
        gave_up = method.give_up & (verdict != RESULTS.successful)
        result = jnp.where(
            report.converged,
            RESULTS.successful,
            jnp.where(
                report.nonfinite,
                RESULTS.nonfinite,
                jnp.where(gave_up, verdict, RESULTS.max_steps_reached),
            ),
        ).astype(jnp.int32)
        done = report.converged | report.nonfinite | gave_up
        return _Loop(loop.k + 1, state, progress, report.residual, result, done)

    initial = _Loop(
        k=jnp.array(0, jnp.int32),
        state=state,
        progress=start(dtype, method.initial_measure(state)),
        residual=jnp.array(jnp.inf, dtype),
        result=jnp.where(nonfinite, RESULTS.nonfinite, RESULTS.max_steps_reached).astype(jnp.int32),
        done=nonfinite,
    )
    loop = jax.lax.while_loop(cond, body, initial)
    # Non-finite values are never written into the iterate, so one left in it came with the
    # first guess (NaN/inf in the inputs or parameters); else a non-finite update was the
    # solve's own overflow, which the verdict (diverged) describes better.
    from_inputs = (loop.result != RESULTS.successful) & method.input_nonfinite(problem, loop.state)
    result = jnp.where(from_inputs, RESULTS.nonfinite, loop.result).astype(jnp.int32)
    return method.carries(problem, loop.state), loop.k, loop.residual, result


def _one_step(method: Method, problem, state, nonfinite):
    """``iterate`` for a method whose one step is exact (``single_step``): the step itself,
    without a loop around it (whose carried state costs ~10% of a single linear scan)."""
    state, report = method.step(problem, state, jnp.array(0, jnp.int32))
    result = jnp.where(
        report.converged & ~nonfinite,
        RESULTS.successful,
        jnp.where(report.nonfinite | nonfinite, RESULTS.nonfinite, RESULTS.max_steps_reached),
    ).astype(jnp.int32)
    iterations = jnp.where(nonfinite, 0, 1).astype(jnp.int32)
    return method.carries(problem, state), iterations, report.residual, result


def solve(method: Method, problem, on_failure: str, guess):
    """The carries of ``problem`` by ``method``, and ``(iterations, residual, result,
    fell_back)``. A failed parallel solve is recomputed exactly (``"fallback"``), raises at
    run time (``"raise"``) or is returned as it is (``"return"``)."""
    if method.exact:
        c = problem.sequential()
        zero = jnp.zeros((), c.dtype)
        ok = jnp.array(RESULTS.successful, jnp.int32)
        return c, (jnp.array(0, jnp.int32), zero, ok, jnp.array(False))
    c, iterations, residual, result = iterate(method, problem, guess)
    failed = result != RESULTS.successful
    if on_failure == "fallback":
        c = lazy_cond(failed, lambda ops: ops[0].sequential(), lambda ops: ops[1], (problem, c))
        fell_back = failed
    else:
        fell_back = jnp.array(False)
        if on_failure == "raise":
            c = eqx.branched_error_if(c, failed, result, RESULTS.messages())
    return c, (iterations, residual, result, fell_back)
