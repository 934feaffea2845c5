"""The parallel solve of the carries, and its implicit gradient.

Everything here works on flat real carries ``c`` of size n (see ``_flatten.py``) and a step
function ``F(c_prev, x, *consts) -> c`` whose closed-over arrays have been made explicit
(``consts``), so that their gradients are not silently lost.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from ._fallback import lazy_cond
from ._linear_recurrence import linear_recurrence
from ._methods import FixedPoint, Method, Newton, QuasiNewton
from ._solution import RESULTS
from ._structure import Diagonal

ON_FAILURE = ("fallback", "raise", "return")


def _shift(c0, c):
    """(c_{-1} = c0, c_0, ..., c_{T-2}): the carry each step starts from."""
    return jnp.concatenate([c0[None], c[:-1]], axis=0)


def sequential_carries(F: Callable, length: int, c0, xs, consts):
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
    c_prev = _shift(c0, c)
    if isinstance(method, FixedPoint):
        return jax.vmap(lambda cp, x: F(cp, x, *consts))(c_prev, xs) - c
    value, J, structure = _linearise(F, method, c_prev, xs, consts)
    # Solving for the update (rather than the next iterate) keeps the right-hand side the
    # residual F(c_{t-1}) - c_t, which tends to zero, so rounding stays relative to it.
    return linear_recurrence(J, value - c, structure)


def parallel_carries(F: Callable, method: Method, length: int, c0, xs, consts, guess):
    """Iterate to the carries. Returns ``(carries, iterations, residual, result)``."""
    if guess is not None:
        c = guess
    elif jax.tree_util.tree_leaves(xs):
        # F(c0, x_t) for all t: exact at t = 0 and usually a good start elsewhere.
        c = jax.vmap(lambda x: F(c0, x, *consts))(xs)
    else:
        c = jnp.broadcast_to(F(c0, xs, *consts), (length,) + c0.shape)
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


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def solve_carries(F: Callable, method: Method, on_failure: str, length: int, c0, xs, guess, consts):
    """All carries c_0..c_{T-1} of c_t = F(c_{t-1}, x_t, *consts), plus the solve's statistics
    ``(iterations, residual, result, fell_back)``. Differentiable w.r.t. ``c0``, ``xs`` and
    ``consts`` by implicit differentiation; ``guess`` is a non-differentiable warm start."""
    return _solve_forward(F, method, on_failure, length, c0, xs, guess, consts)


def _solve_forward(F, method, on_failure, length, c0, xs, guess, consts):
    c, iterations, residual, result = parallel_carries(F, method, length, c0, xs, consts, guess)
    failed = result != RESULTS.successful
    if on_failure == "fallback":
        c = lazy_cond(
            failed,
            lambda ops: sequential_carries(F, length, *ops[:-1]),
            lambda ops: ops[-1],
            (c0, xs, consts, c),
        )
        fell_back = failed
    else:
        fell_back = jnp.array(False)
        if on_failure == "raise":
            c = eqx.branched_error_if(
                c,
                failed,
                result,
                [RESULTS.message(code) for code in range(3)],
            )
    return c, (iterations, residual, result, fell_back)


def _solve_fwd(F, method, on_failure, length, c0, xs, guess, consts):
    c, stats = _solve_forward(F, method, on_failure, length, c0, xs, guess, consts)
    return (c, stats), (c0, xs, guess, consts, c)


def _solve_bwd(F, method, on_failure, length, residuals, cotangents):
    r"""Adjoint: lambda_t = g_t + J_{t+1}^T lambda_{t+1} (one reverse linear scan with the exact
    Jacobians at the solution), then one vmapped VJP of F for the input cotangents."""
    c0, xs, guess, consts, c = residuals
    g = cotangents[0]
    structure = method.jacobian
    c_prev = _shift(c0, c)

    def jacobian_at(cp, x):
        return structure.jacobian(lambda c_: F(c_, x, *consts), cp)[1]

    J = jax.vmap(jacobian_at)(c_prev, xs)
    # A_t = J_{t+1}^T; the last one multiplies lambda_T = 0, so its value is irrelevant.
    A = jnp.concatenate([structure.transpose(J[1:]), jnp.zeros_like(J[:1])], axis=0)
    lam = linear_recurrence(A, g, structure, reverse=True)

    def all_steps(cp, xs, consts):
        return jax.vmap(lambda c_, x: F(c_, x, *consts))(cp, xs)

    _, vjp = jax.vjp(all_steps, c_prev, xs, consts)
    d_c_prev, d_xs, d_consts = vjp(lam)
    d_guess = jax.tree_util.tree_map(jnp.zeros_like, guess)
    return d_c_prev[0], d_xs, d_guess, d_consts


solve_carries.defvjp(_solve_fwd, _solve_bwd)
