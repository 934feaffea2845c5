"""The parallel iteration: from a first guess to the carries, for the iterative methods.

Everything here works on flat real carries ``c`` of size n (see ``_flatten.py``) and a step
function ``F(c_prev, x, *consts) -> c`` whose closed-over arrays have been made explicit
(``consts``). Nothing here is differentiated: gradients come from ``_implicit.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from ._linear_recurrence import linear_recurrence
from ._methods import FixedPoint, Method, Newton, QuasiNewton
from ._solution import RESULTS
from ._structure import Diagonal


def shift(c0, c):
    """(c_{-1} = c0, c_0, ..., c_{T-2}): the carry each step starts from."""
    return jnp.concatenate([c0[None], c[:-1]], axis=0)


def sequential_carries(F: Callable, length: int, c0, xs, consts):
    """The carries by ``jax.lax.scan``: the reference, and the fallback."""

    def step(c, x):
        c = F(c, x, *consts)
        return c, c

    return jax.lax.scan(step, c0, xs, length=length)[1]


def _linearise(F, method: Method, c_prev, xs, consts):
    """``(F(c_prev_t, x_t), J_t, structure)`` for all t, with J in the structure the forward
    solve uses (the declared one for Newton, its diagonal for quasi-Newton)."""
    structure = method.jacobian

    def at_step(c, x):
        fn = lambda c_: F(c_, x, *consts)
        if isinstance(method, QuasiNewton):
            return structure.diagonal(fn, c)
        return structure.jacobian(fn, c)

    value, J = jax.vmap(at_step)(c_prev, xs)
    forward_structure = Diagonal() if isinstance(method, QuasiNewton) else structure
    return value, J, forward_structure


def _update(F, method: Method, c0, c, xs, consts):
    """One parallel iteration: the update delta with c + delta the next guess."""
    c_prev = shift(c0, c)
    if isinstance(method, FixedPoint):
        return jax.vmap(lambda cp, x: F(cp, x, *consts))(c_prev, xs) - c
    value, J, structure = _linearise(F, method, c_prev, xs, consts)
    # Solving for the update (rather than the next iterate) keeps the right-hand side the
    # residual F(c_{t-1}) - c_t, which tends to zero, so rounding stays relative to it.
    return linear_recurrence(J, value - c, structure)


def first_guess(F: Callable, length: int, c0, xs, consts, guess):
    """The warm start if given, else F(c0, x_t) for all t: exact at t = 0 and usually a good
    start elsewhere."""
    if guess is not None:
        return guess
    if jax.tree_util.tree_leaves(xs):
        return jax.vmap(lambda x: F(c0, x, *consts))(xs)
    return jnp.broadcast_to(F(c0, xs, *consts), (length,) + c0.shape)


def parallel_carries(F: Callable, method: Method, length: int, c0, xs, consts, guess):
    """Iterate to the carries. Returns ``(carries, iterations, residual, result)``."""
    c = first_guess(F, length, c0, xs, consts, guess)
    positions = jnp.arange(length)

    if isinstance(method, Newton) and method.carry_linear:
        delta = _update(F, method, c0, c, xs, consts)
        finite = jnp.all(jnp.isfinite(delta))
        result = jnp.where(finite, RESULTS.successful, RESULTS.nonfinite)
        return c + delta, jnp.array(1, jnp.int32), jnp.max(jnp.abs(delta)), result

    def cond(state):
        k, _, _, done, _ = state
        return (k < method.max_steps) & ~done

    def body(state):
        k, c, _, _, _ = state
        delta = _update(F, method, c0, c, xs, consts)
        finite = jnp.isfinite(delta)
        # Non-finite entries are reset to the previous iterate so they cannot poison the
        # rest of the solve; steps t < k are exact by now, so a non-finite update there is
        # genuine (NaN in the inputs or parameters) and further iterations cannot help.
        new_c = jnp.where(finite, c + delta, c)
        step_bad = ~jnp.all(finite, axis=-1)
        genuine = jnp.any(step_bad & (positions < k))
        scale = method.atol + method.rtol * jnp.abs(new_c)
        converged = jnp.all(finite) & jnp.all(jnp.abs(delta) <= scale)
        residual = jnp.max(jnp.abs(delta))
        return k + 1, new_c, residual, converged | genuine, jnp.any(step_bad)

    dtype = c.dtype
    init_state = (
        jnp.array(0, jnp.int32),
        c,
        jnp.array(jnp.inf, dtype),
        jnp.array(False),
        jnp.array(False),
    )
    k, c, residual, done, nonfinite = jax.lax.while_loop(cond, body, init_state)
    result = jnp.where(
        nonfinite, RESULTS.nonfinite, jnp.where(done, RESULTS.successful, RESULTS.max_steps_reached)
    )
    return c, k, residual, result
