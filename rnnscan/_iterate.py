"""The parallel iteration: from a first guess to the carries, for the iterative methods.

Everything here works on flat real carries ``c`` of size n (see ``_flatten.py``) and a step
function ``F(c_prev, x, *consts) -> c`` whose closed-over arrays have been made explicit
(``consts``). Nothing here is differentiated: gradients come from ``_implicit.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from ._methods import FixedPoint, Method, Newton
from ._solution import RESULTS
from ._stopping import carry_scale, observe, start
from ._structure import Diagonal
from ._timeline import Timeline


def sequential_carries(F: Callable, timeline: Timeline, length: int, c0, xs, consts):
    """The carries by ``jax.lax.scan``: the reference, and the fallback."""
    return timeline.sequential(lambda c, x: F(c, x, *consts), c0, xs, length)


def linearise(F, method: Method, timeline: Timeline, c0, c, xs, consts):
    """``(F(c_{t-1}, x_t), J_t, structure)`` for all t at the carries ``c``, with J in the
    structure the forward solve uses (the declared one, or its diagonal)."""
    c_prev = timeline.shift(c0, c)
    structure = method.jacobian

    def at_step(c, x):
        fn = lambda c_: F(c_, x, *consts)
        if method.diagonal_only:
            return structure.diagonal(fn, c)
        return structure.jacobian(fn, c)

    value, J = jax.vmap(at_step)(c_prev, xs)
    forward_structure = Diagonal() if method.diagonal_only else structure
    return value, J, forward_structure


def update(F, method: Method, timeline: Timeline, c0, c, xs, consts):
    """One parallel iteration: the update delta with c + delta the next guess."""
    if isinstance(method, FixedPoint):
        c_prev = timeline.shift(c0, c)
        return jax.vmap(lambda cp, x: F(cp, x, *consts))(c_prev, xs) - c
    value, J, structure = linearise(F, method, timeline, c0, c, xs, consts)
    # Solving for the update (rather than the next iterate) keeps the right-hand side the
    # residual F(c_{t-1}) - c_t, which tends to zero, so rounding stays relative to it.
    return timeline.linear_recurrence(J, value - c, structure)


def first_guess(F: Callable, length: int, c0, xs, consts, guess):
    """The warm start if given, else F(c0, x_t) for all t: exact at t = 0 and usually a good
    start elsewhere."""
    if guess is not None:
        return guess
    if jax.tree_util.tree_leaves(xs):
        return jax.vmap(lambda x: F(c0, x, *consts))(xs)
    return jnp.broadcast_to(F(c0, xs, *consts), (length,) + c0.shape)


def parallel_carries(
    F: Callable, method: Method, timeline: Timeline, length: int, c0, xs, consts, guess
):
    """Iterate to the carries. Returns ``(carries, iterations, residual, result)``."""
    c = first_guess(F, length, c0, xs, consts, guess)
    positions = timeline.positions(length)
    total = timeline.max(positions) + 1  # T, also when split across devices

    if isinstance(method, Newton) and method.carry_linear:
        delta = update(F, method, timeline, c0, c, xs, consts)
        finite = timeline.all(jnp.isfinite(delta))
        result = jnp.where(finite, RESULTS.successful, RESULTS.nonfinite)
        return c + delta, jnp.array(1, jnp.int32), timeline.max(jnp.abs(delta)), result

    scale = carry_scale(c0, c, timeline)

    def cond(state):
        k, _, _, done, _, _, _ = state
        return (k < method.max_steps) & ~done

    def body(state):
        k, c, _, _, _, progress, _ = state
        delta = update(F, method, timeline, c0, c, xs, consts)
        finite = jnp.isfinite(delta)
        # Non-finite entries are reset to the previous iterate so they cannot poison the
        # rest of the solve; steps t < k are exact by now, so a non-finite update there is
        # genuine (NaN in the inputs or parameters) and further iterations cannot help.
        new_c = jnp.where(finite, c + delta, c)
        step_bad = ~jnp.all(finite, axis=-1)
        genuine = timeline.any(step_bad & (positions < k))
        tolerance = method.atol + method.rtol * jnp.abs(new_c)
        step_converged = jnp.all(finite & (jnp.abs(delta) <= tolerance), axis=-1)
        converged = timeline.all(step_converged)
        residual = timeline.max(jnp.where(finite, jnp.abs(delta), 0))
        any_bad = timeline.any(step_bad)
        # The leading run of converged steps ends at the first unconverged position.
        first_unconverged = -timeline.max(jnp.where(step_converged, -total, -positions))
        progress, verdict = observe(
            progress,
            residual,
            ~any_bad,
            scale,
            prefix=first_unconverged,
            unconverged=total - first_unconverged,
            iterations_left=method.max_steps - k - 1,
        )
        gave_up = method.give_up & (verdict != RESULTS.successful)
        done = converged | genuine | gave_up
        return (
            k + 1,
            new_c,
            residual,
            done,
            any_bad,
            progress,
            jnp.where(gave_up, verdict, RESULTS.successful).astype(jnp.int32),
        )

    dtype = c.dtype
    init_state = (
        jnp.array(0, jnp.int32),
        c,
        jnp.array(jnp.inf, dtype),
        jnp.array(False),
        jnp.array(False),
        start(dtype),
        jnp.array(RESULTS.successful, jnp.int32),
    )
    k, c, residual, done, nonfinite, _, verdict = jax.lax.while_loop(cond, body, init_state)
    # Non-finite entries are never written into the iterate, so one left in it came with
    # the first guess: NaN/inf in the inputs or parameters. Otherwise a non-finite update
    # is the solve's own overflow, which the verdict (diverged) describes better.
    genuine = ~timeline.all(jnp.isfinite(c))
    result = jnp.where(
        done & (verdict == RESULTS.successful) & ~nonfinite,
        RESULTS.successful,
        jnp.where(
            genuine | (done & (verdict == RESULTS.successful)),
            RESULTS.nonfinite,
            jnp.where(verdict != RESULTS.successful, verdict, RESULTS.max_steps_reached),
        ),
    )
    return c, k, residual, result
